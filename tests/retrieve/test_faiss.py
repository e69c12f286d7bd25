"""FaissRetriever: same answers as the exact numpy search, exclusion, tie guarantees."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from glossrec.errors import ConfigError
from glossrec.retrieve.base import mask_rows, topk
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


class _NoisyIndex:
    """A FAISS index whose scores err by a few float32 ulps, differently per item, and whose
    order among near-equal scores is reversed: what another SIMD path may legally return."""

    def __init__(self, index, noise: np.ndarray) -> None:
        self.index, self.noise = index, noise

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, lab = self.index.search(q, self.index.ntotal)
        dist = dist + np.where(lab >= 0, self.noise[np.maximum(lab, 0)], 0).astype(np.float32)
        order = np.lexsort((-lab, -dist), axis=-1)[:, :k]
        return np.take_along_axis(dist, order, 1), np.take_along_axis(lab, order, 1)


def test_tie_rule_holds_whatever_scores_faiss_computes() -> None:
    # Duplicated items and coordinate-permuted ones tie exactly; FAISS's own scores are made to
    # disagree by a few ulps. The answer must still be (score desc, position asc) over exact scores.
    rng = np.random.default_rng(2)
    base = unit(rng.standard_normal((6, 16)))
    perm = unit(np.eye(16, dtype=np.float32)[rng.integers(0, 16, 40)] + 0.1)
    emb = np.vstack([base[rng.integers(0, 6, 60)], perm])
    r = with_embeddings(FaissRetriever, emb)
    eps = np.float32(np.finfo(np.float32).eps)
    r._faiss = _NoisyIndex(r.faiss_index(), rng.integers(-3, 4, len(emb)) * eps)
    q = np.vstack([emb[rng.integers(0, len(emb), 20)], unit(rng.standard_normal((5, 16)))])
    excl = [rng.choice(len(emb), size=rng.integers(0, 30), replace=False) for _ in range(len(q))]
    for k in (1, 3, 7, 25, 150):
        for ex in (None, excl):
            idx, sc = r.search_embeddings(q, k, ex)
            exact = (q.astype(np.float64) @ emb.astype(np.float64).T).astype(np.float32)
            mask_rows(exact, ex)
            want_idx, want_sc = topk(exact, k)
            assert np.array_equal(idx, want_idx) and np.array_equal(sc, want_sc)


def _clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    return unit(centres[rng.integers(0, 40, n)] + 0.4 * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_nearly_what_exact_search_finds(kind: str) -> None:
    emb = _clustered(3000)
    q = _clustered(200, seed=1)
    exact = with_embeddings(FaissRetriever, emb).search_embeddings(q, 10)[0]
    approx = with_embeddings(FaissRetriever, emb)
    approx.index_type = kind
    approx.nlist, approx.nprobe = 16, 8
    got, scores = approx.search_embeddings(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), exact.tolist())])
    assert recall >= 0.9
    # Whatever it finds is scored exactly and ordered by the project's rule.
    np.testing.assert_allclose(scores, np.take_along_axis(q @ emb.T, got, axis=1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_added_items_go_into_the_built_index(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    emb = _clustered(500)
    r = with_embeddings(FaissRetriever, emb)
    r.index_type = kind
    r.nlist = 8
    built = r.faiss_index()
    new = unit(np.ones((1, emb.shape[1]))).astype(np.float32)
    monkeypatch.setattr(r, "encode", lambda texts, is_query, show_progress=False: new)
    r.add(["brand-new"], ["Title: brand new"])
    assert r.faiss_index() is built and built.ntotal == 501  # no rebuild
    assert r.ids[r.search_embeddings(new, 1)[0][0, 0]] == "brand-new"
    r.remove(["brand-new"])
    assert r.faiss_index() is not built and r.faiss_index().ntotal == 500  # rebuilt


def test_index_settings_round_trip(tmp_path) -> None:
    from glossrec.config import RetrieveConfig
    from glossrec.retrieve import build_retriever, load_retriever

    r = build_retriever(RetrieveConfig(retriever="dense", faiss=True, faiss_index="ivf", faiss_nprobe=5))
    assert r.index_type == "ivf" and r.nprobe == 5
    r._items.reset(["a", "b"], ["x", "y"])
    r._emb = unit(np.eye(2, 8)).astype(np.float32)
    r.save(tmp_path / "ix")
    back = load_retriever(tmp_path / "ix")
    assert back.index_type == "ivf" and back.nprobe == 5
