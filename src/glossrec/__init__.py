"""glossrec: generative sequential recommendation with semantic search (GLoSS and beyond)."""

__version__ = "0.1.0"
