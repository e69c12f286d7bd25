"""Serving: the :class:`Recommender` Python API, batching and the HTTP app.

The live catalog (:mod:`glossrec.retrieve.live`) and :func:`make_index_run`
(:mod:`glossrec.rundir`) live below serving; they are importable from here too.

Importing this package does not import torch, FastAPI or a retriever backend: each loads when
first used, so ``glossrec items show`` stays fast.
"""

from __future__ import annotations

from glossrec.retrieve.live import ItemRecord, LiveCatalog, UnknownItemsError, WriteResult
from glossrec.rundir import make_index_run
from glossrec.serve.recommender import (
    HistoryEntry, Recommendation, RecommendedItem, Recommender, Request,
)

__all__ = [
    "HistoryEntry", "ItemRecord", "LiveCatalog", "Recommendation", "RecommendedItem",
    "Recommender", "Request", "UnknownItemsError", "WriteResult", "make_index_run",
]
