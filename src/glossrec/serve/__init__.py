"""Serving: the :class:`Recommender` Python API, the live catalog, batching and the HTTP app.

Importing this package does not import torch, FastAPI or a retriever backend: each loads when
first used, so ``glossrec items show`` stays fast.
"""

from __future__ import annotations

from glossrec.serve.recommender import (
    HistoryEntry, Recommendation, RecommendedItem, Recommender, Request, make_index_run,
)
from glossrec.retrieve.live import ItemRecord, LiveCatalog, UnknownItemsError, WriteResult

__all__ = [
    "HistoryEntry", "ItemRecord", "LiveCatalog", "Recommendation", "RecommendedItem",
    "Recommender", "Request", "UnknownItemsError", "WriteResult", "make_index_run",
]
