"""The ranking rules that merge several texts' hits into one list per user."""

from __future__ import annotations

import numpy as np
import pytest

from glossrec.retrieve.ranking import fuse, fuse_users


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
