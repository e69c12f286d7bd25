"""FaissRetriever: same answers as the exact numpy search, exclusion, tie guarantees."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from glossrec.errors import ConfigError
from glossrec.retrieve.dense import DenseRetriever
from glossrec.retrieve.faiss_index import FaissRetriever

pytest.importorskip("faiss")


def with_embeddings(cls: type, emb: np.ndarray) -> DenseRetriever:
    """A retriever over given embeddings (no encoder involved)."""
    r = cls(encoder="fake")
    r._items.reset([f"i{i}" for i in range(len(emb))], [""] * len(emb))
    r._emb = np.ascontiguousarray(emb, dtype=np.float32)
    r._changed()
    return r


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_matches_numpy_search_with_exclusions() -> None:
    rng = np.random.default_rng(0)
    emb = unit(rng.standard_normal((500, 32)))
    q = unit(rng.standard_normal((50, 32)))
    excl = [rng.choice(500, size=rng.integers(0, 20), replace=False) for _ in range(50)]
    dense = with_embeddings(DenseRetriever, emb)
    faiss = with_embeddings(FaissRetriever, emb)
    for ex in (None, excl):
        d_idx, d_sc = dense.search_embeddings(q, 10, ex)
        f_idx, f_sc = faiss.search_embeddings(q, 10, ex)
        assert np.array_equal(d_idx, f_idx)
        assert np.allclose(d_sc, f_sc, atol=1e-5)
    f_idx, _ = faiss.search_embeddings(q, 10, excl)
    for row, ex in zip(f_idx, excl):
        assert not set(row.tolist()) & set(ex.tolist())


def test_ties_beyond_the_first_fetch_go_to_lower_positions() -> None:
    # 40 identical items at positions 10..49 after 10 distinct ones; with k=3 faiss's first
    # fetch (k + excluded) cannot hold every tie, so the row is fetched deeper.
    rng = np.random.default_rng(1)
    distinct = unit(rng.standard_normal((10, 8)))
    same = np.tile(unit(np.ones((1, 8))), (40, 1))
    emb = np.vstack([distinct, same])[::-1].copy()  # the tied items now sit at positions 0..39
    r = with_embeddings(FaissRetriever, emb)
    q = unit(np.ones((1, 8)))
    idx, sc = r.search_embeddings(q, 3, exclude=[np.array([0, 2])])
    assert idx[0].tolist() == [1, 3, 4]
    assert sc[0, 0] == sc[0, 1] == sc[0, 2]


def test_k_larger_than_catalog_and_everything_excluded() -> None:
    emb = unit(np.eye(4, dtype=np.float32) + 0.1)
    r = with_embeddings(FaissRetriever, emb)
    idx, sc = r.search_embeddings(emb[:2], 6, exclude=[np.array([0]), np.arange(4)])
    assert idx[0, 0] == 1 and idx[0, 3:].tolist() == [-1, -1, -1]
    assert idx[1].tolist() == [-1] * 6 and np.isneginf(sc[1]).all()


def test_add_remove_rebuild_the_faiss_index(catalog, fake_encoder) -> None:
    ids, texts = catalog
    r = FaissRetriever(encoder="fake")
    r.index(ids, texts)
    r.add(["new"], ["Title: Bamboo toothbrush charcoal"])
    assert r.ids[r.search(["bamboo toothbrush"], 1)[0][0, 0]] == "new"
    r.remove(["new"])
    assert r.faiss_index().ntotal == 10
    idx, _ = r.search(["bamboo toothbrush"], 10)
    assert "new" not in {r.ids[i] for i in idx[0].tolist()}


def test_missing_faiss_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(ConfigError, match="pip install faiss-cpu"):
        FaissRetriever(encoder="fake")
