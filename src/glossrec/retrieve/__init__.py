"""Retrieval backends (BM25, dense, FAISS), their shared item bookkeeping and crash-safe storage.

Backends are imported lazily (``from glossrec.retrieve import DenseRetriever`` still works), so
``import glossrec.retrieve`` costs neither torch nor bm25s until a backend is used.

Modules: :mod:`~glossrec.retrieve.base` (the :class:`Retriever` interface, exact top-k, the
search loop the backends share), :mod:`~glossrec.retrieve.items` (:class:`ItemTable`: ids and
texts by position), :mod:`~glossrec.retrieve.store` (versioned, crash-safe folders; the on-disk
layout is described there), :mod:`~glossrec.retrieve.factory` (:func:`build_retriever`,
:func:`load_retriever`), the backends :mod:`~glossrec.retrieve.bm25`,
:mod:`~glossrec.retrieve.dense` and :mod:`~glossrec.retrieve.faiss_index`, and
:mod:`~glossrec.retrieve.live`, the live catalog (item records plus their index, versioned and
journaled), which sits here, below both the batch pipeline and serving, so neither imports the
other to reach it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from glossrec.retrieve.base import (  # noqa: F401 (also importable from here)
    Retriever, check_search_args, rows_per_chunk, topk,
)
from glossrec.retrieve.factory import BACKENDS, backend_class, build_retriever, load_retriever
from glossrec.retrieve.items import ItemTable, check_items  # noqa: F401
from glossrec.retrieve.store import (  # noqa: F401 (also importable from here)
    CURRENT, FORMAT, META, current_version, open_saved, read_array, read_items, read_meta,
    save_versioned, write_array, write_items, write_meta,
)

if TYPE_CHECKING:
    from glossrec.retrieve.bm25 import BM25Retriever
    from glossrec.retrieve.dense import DenseRetriever
    from glossrec.retrieve.faiss_index import FaissRetriever

__all__ = [
    "Retriever", "topk", "BM25Retriever", "DenseRetriever", "FaissRetriever",
    "build_retriever", "load_retriever", "ItemTable", "save_versioned", "current_version",
    "read_meta", "CURRENT", "META",
]


def __getattr__(name: str) -> Any:
    if name in BACKENDS:
        return backend_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
