"""Retrievers by configuration or by saved kind; each backend is imported only when asked for."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glossrec.retrieve.base import Retriever
from glossrec.retrieve.store import KINDS, current_version, read_meta

if TYPE_CHECKING:
    from glossrec.config import RetrieveConfig

__all__ = ["build_retriever", "load_retriever", "backend_class", "BACKENDS"]

BACKENDS = {
    "BM25Retriever": "glossrec.retrieve.bm25",
    "DenseRetriever": "glossrec.retrieve.dense",
    "FaissRetriever": "glossrec.retrieve.faiss_index",
}
"""Backend class name -> its module (imported on first use: bm25s, torch, faiss are heavy)."""


def backend_class(name: str) -> Any:
    """The backend class called `name` (a key of :data:`BACKENDS`), its module imported now."""
    return getattr(importlib.import_module(BACKENDS[name]), name)


def build_retriever(cfg: RetrieveConfig) -> Retriever:
    """An empty retriever configured by the ``[retrieve]`` section; call ``index`` next."""
    if cfg.retriever == "bm25":
        from glossrec.retrieve.bm25 import BM25Retriever

        return BM25Retriever(stopwords=cfg.bm25_stopwords, stemmer=cfg.bm25_stemmer,
                             method=cfg.bm25_method, k1=cfg.bm25_k1, b=cfg.bm25_b)
    device = cfg.encode_device
    if cfg.faiss:
        from glossrec.retrieve.faiss_index import FaissRetriever

        return FaissRetriever(encoder=cfg.encoder, e5_prefixes=cfg.e5_prefixes,
                              batch_size=cfg.encode_batch_size, device=device,
                              index_type=cfg.faiss_index, hnsw_m=cfg.faiss_hnsw_m,
                              ef_construction=cfg.faiss_ef_construction,
                              ef_search=cfg.faiss_ef_search, nlist=cfg.faiss_nlist,
                              nprobe=cfg.faiss_nprobe)
    from glossrec.retrieve.dense import DenseRetriever

    return DenseRetriever(encoder=cfg.encoder, e5_prefixes=cfg.e5_prefixes,
                          batch_size=cfg.encode_batch_size, device=device)


def load_retriever(folder: str | Path) -> Retriever:
    """Rebuild whichever backend saved `folder` (its kind is in retriever.json)."""
    folder = Path(folder)
    meta = read_meta(current_version(folder))
    cls = backend_class(KINDS[meta["kind"]])
    return cls.load(folder)
