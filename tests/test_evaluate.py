"""Metrics against an independent reference (ranx) on random runs, ties and short lists."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from glossrec.config import EvalConfig
from glossrec.evaluate import (bootstrap_ci, evaluate, ndcg_at, segment_labels, summarize,
                               target_ranks)
from glossrec.retrieve.base import topk


def _random_run(rng: np.random.Generator, n_users: int, n_items: int, k: int):
    """Rankings from integer scores (many ties), some rows shorter than k."""
    scores = rng.integers(0, 4, size=(n_users, n_items)).astype(np.float32)
    short = rng.random(n_users) < 0.3
    scores[short, :] = -np.inf
    for u in np.flatnonzero(short):  # a few finite scores only -> fewer than k hits
        cols = rng.choice(n_items, size=rng.integers(0, k), replace=False)
        scores[u, cols] = rng.integers(0, 4, size=len(cols))
    ranked, sc = topk(scores, k)
    targets = rng.integers(0, n_items, size=n_users)
    return ranked, sc, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_ranx(seed: int) -> None:
    ranx = pytest.importorskip("ranx")
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(seed)
    ranked, sc, targets = _random_run(rng, 300, 40, 20)
    ranks = target_ranks(ranked, targets)
    ours = evaluate([f"u{i}" for i in range(300)], targets, ranked, sc, np.full(300, 8),
                    EvalConfig(cutoffs=[1, 5, 10, 20])).metrics["overall"]
    qrels = ranx.Qrels({f"u{u}": {f"d{targets[u]}": 1} for u in range(300)})
    # Our ranking already broke the score ties (topk: lower index first); ranx's own order
    # among tied scores is unspecified (numba sort), so it gets our ranks as scores.
    run_dict = {}
    for u in range(300):
        row = {f"d{i}": float(100 - r) for r, i in enumerate(ranked[u]) if i >= 0}
        run_dict[f"u{u}"] = row or {"none": 0.0}
    run = ranx.Run(run_dict)
    names = [f"{m}@{k}" for k in (1, 5, 10, 20) for m in ("recall", "ndcg", "mrr")]
    ref = ranx.evaluate(qrels, run, names)
    for name in names:
        assert ours[name] == pytest.approx(float(ref[name]), abs=1e-12), name
    assert np.isfinite(ranks).sum() > 0


def test_single_user_formulas() -> None:
    ranked = np.array([[3, 7, 9, -1, -1]])
    for target, rank in ((3, 1), (7, 2), (9, 3)):
        r = target_ranks(ranked, np.array([target]))
        assert r[0] == rank
        assert ndcg_at(r, 5)[0] == pytest.approx(1 / np.log2(rank + 1))
    r = target_ranks(ranked, np.array([-1]))  # padding never matches a real target id
    assert np.isinf(r[0]) or r[0] > 3
    assert np.isinf(target_ranks(ranked, np.array([4]))[0])


def test_segments_follow_paper_thresholds() -> None:
    lengths = np.array([3, 5, 6, 14, 15, 40])
    assert list(segment_labels(lengths, 5, 14)) == ["cold", "cold", "regular", "regular", "power", "power"]
    per_user = {"recall@5": np.array([1, 0, 1, 1, 0, 0], dtype=float)}
    s = summarize(per_user, segment_labels(lengths, 5, 14))
    assert s["cold"] == {"users": 2, "recall@5": 0.5}
    assert s["regular"]["recall@5"] == 1.0 and s["power"]["recall@5"] == 0.0
    assert s["overall"]["users"] == 6


def test_power_threshold_defaults() -> None:
    ranked = np.zeros((4, 5), dtype=np.int64)
    ev = evaluate(list("abcd"), np.zeros(4, dtype=np.int64), ranked, np.zeros((4, 5)),
                  np.array([5, 6, 10, 30]), EvalConfig(), dataset_name="beauty")
    assert ev.metrics["segments"]["power_min"] == 14
    ev = evaluate(list("abcd"), np.zeros(4, dtype=np.int64), ranked, np.zeros((4, 5)),
                  np.arange(1, 5) * 10, EvalConfig(), dataset_name="mine")
    assert ev.metrics["segments"]["power_min"] == int(np.percentile(np.arange(1, 5) * 10, 90))


def test_bootstrap_ci_brackets_mean() -> None:
    v = np.random.default_rng(0).random(500) < 0.1
    lo, hi = bootstrap_ci(v.astype(float))
    assert lo < v.mean() < hi and hi - lo < 0.1
