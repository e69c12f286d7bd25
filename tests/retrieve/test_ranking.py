"""The ranking rules that merge several texts' hits into one list per user."""

from __future__ import annotations

import numpy as np
import pytest

from glossrec.retrieve.base import mask_rows, topk
from glossrec.retrieve.ranking import LIS, fuse, fuse_users, hits_per_text, rank_texts


def test_paper_rule_top1_dedup_max_score() -> None:
    # 5 texts; texts 0 and 3 hit item 7 (scores .5 and .9): it counts once with .9.
    idx = np.array([[7, 1], [2, 7], [4, 2], [7, 9], [-1, -1]])
    sc = np.array([[.5, .4], [.8, .1], [.3, .2], [.9, .0], [-np.inf, -np.inf]])
    items, scores = fuse(idx, sc, "paper", k=5)
    assert items.tolist() == [7, 2, 4]  # only top-1 per text; fewer than 5 items
    assert scores.tolist() == [.9, .8, .3]


def test_paper_rule_ties_go_to_earlier_text() -> None:
    items, _ = fuse(np.array([[3], [1], [2]]), np.array([[1.0], [1.0], [2.0]]), "paper", k=5)
    assert items.tolist() == [2, 3, 1]


def test_max_fusion_uses_all_hits() -> None:
    idx = np.array([[1, 2, 3], [3, 4, 1]])
    sc = np.array([[.9, .5, .1], [.95, .2, .3]])
    items, scores = fuse(idx, sc, "max", k=3)
    assert items.tolist() == [3, 1, 2]
    assert scores.tolist() == [.95, .9, .5]


def test_rrf_sums_reciprocal_ranks() -> None:
    idx = np.array([[1, 2], [2, 1], [2, 3]])
    items, scores = fuse(idx, np.zeros((3, 2)), "rrf", k=3, rrf_k=60)
    assert items.tolist() == [2, 1, 3]
    assert scores[0] == pytest.approx(2 / 61 + 1 / 62)


def test_fuse_users_pads() -> None:
    idx = np.array([[1], [1], [5], [6]])
    sc = np.array([[1.0], [0.5], [2.0], [1.0]])
    items, scores = fuse_users(idx, sc, np.array([0, 2, 2, 4]), "paper", k=3)
    assert items.tolist() == [[1, -1, -1], [-1, -1, -1], [5, 6, -1]]
    assert np.isinf(scores[1]).all()


# ---- rank_texts: texts per user -> searched hits -> fused ranking (evaluation and serving) ----

ROWS = {  # each query text's scores over a 6-item index
    "a": [3.0, 2.0, 2.0, 1.0, 0.0, 0.0],
    "b": [0.0, 5.0, 1.0, 1.0, 4.0, 0.0],
    "c": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # all tied
}


class _Rows:
    """A retriever whose score rows are given; the real exact top-k and masking."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def __len__(self) -> int:
        return 6

    def search(self, texts, k, exclude=None, show_progress=False):
        self.calls.append((list(texts), k))
        s = np.array([ROWS[t] for t in texts], dtype=np.float32)
        mask_rows(s, exclude)
        return topk(s, k)


def test_rank_texts_paper_top1_per_text_with_exclusions() -> None:
    r = _Rows()
    res = rank_texts(r, [["a", "b"], ["b"]], 5, "paper", exclude=[np.array([1]), None])
    assert r.calls == [(["a", "b", "b"], 1)]  # one search call, top-1 per text
    assert res.items.tolist() == [[4, 0, -1, -1, -1], [1, -1, -1, -1, -1]]  # user 0 never gets 1
    assert res.scores[0, :2].tolist() == [4.0, 3.0] and np.isinf(res.scores[0, 2:]).all()
    assert res.found_by(0, 4) == [1] and res.found_by(0, 0) == [0] and res.found_by(1, 1) == [0]
    items, scores = res.user(0)
    assert items.tolist() == [4, 0] and scores.tolist() == [4.0, 3.0]


def test_rank_texts_max_fuses_every_hit_with_exclusions() -> None:
    r = _Rows()
    res = rank_texts(r, [["a", "b"]], 3, "max", exclude=[[1]], per_text_k=4)
    assert r.calls[0][1] == 4  # max(per_text_k, k) hits per text
    assert res.items.tolist() == [[4, 0, 2]] and res.scores.tolist() == [[4.0, 3.0, 2.0]]
    assert res.found_by(0, 4) == [0, 1]  # a's 4th hit and b's 1st: every searched hit counts
    assert res.found_by(0, 1) == []  # excluded


def test_rank_texts_rrf() -> None:
    res = rank_texts(_Rows(), [["a", "b"]], 3, "rrf", per_text_k=3, rrf_k=60)
    # a: 0, 1, 2 (1 and 2 tie: lower position first); b: 1, 4, 2
    assert res.items.tolist() == [[1, 2, 0]]
    assert res.scores[0].tolist() == pytest.approx([1 / 61 + 1 / 62, 2 / 63, 1 / 61])
    assert fuse_users(res.hit_idx, res.hit_scores, res.offsets, "rrf", 3)[0].tolist() == [[1, 2, 0]]


def test_lis_is_max_fusion_of_one_text_exactly_with_ties() -> None:
    r = _Rows()
    texts = [["c"], ["a"], ["c"]]
    exclude = [np.array([0]), None, np.array([5, 2])]
    res = rank_texts(r, texts, [2, 4, 6], LIS, exclude=exclude, per_text_k=50)
    assert r.calls[0][1] == 6  # one text per user: the largest k, not per_text_k
    for u, (t, e, k) in enumerate(zip(texts, exclude, [2, 4, 6])):
        direct_idx, direct_sc = r.search(t, k, None if e is None else [e])
        keep = direct_idx[0] >= 0
        items, scores = res.user(u)
        assert items.tolist() == direct_idx[0][keep].tolist()[:k]
        assert scores.tolist() == direct_sc[0][keep].astype(np.float64).tolist()[:k]
    assert res.items[0].tolist() == [1, 2, -1, -1, -1, -1] and res.user(1)[0].tolist() == [0, 1, 2, 3]
    assert res.user(2)[0].tolist() == [0, 1, 3, 4]  # ties by position, 2 and 5 excluded


def test_hits_per_text_and_edges() -> None:
    assert hits_per_text("paper", 20, 50, [["x", "y"]]) == 1
    assert hits_per_text("max", 20, 50, [["x", "y"], ["z"]]) == 50
    assert hits_per_text("rrf", 20, 5, [["x", "y"]]) == 20
    assert hits_per_text("max", 20, 50, [["x"], []]) == 20
    # a user without texts ranks nothing; precomputed hits come through a search function
    seen: list[int] = []

    def search(texts, width, exclude):
        seen.append(width)
        return np.array([[3, 1]] * len(texts)), np.array([[2.0, 1.0]] * len(texts))

    res = rank_texts(search, [["x"], []], 2, LIS)
    assert seen == [2] and res.items.tolist() == [[3, 1], [-1, -1]]
    empty = rank_texts(_Rows(), [], 5, "paper")
    assert empty.items.shape == (0, 5)
