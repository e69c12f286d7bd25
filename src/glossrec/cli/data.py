"""CLI commands: data."""

from __future__ import annotations

from glossrec.cli.app import app  # noqa: F401
