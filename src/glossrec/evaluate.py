"""Full-catalog ranking metrics with one relevant item per user, per user segment.

Metrics are plain functions over ``ranked`` (int array [n_users, K], -1 padding) and
``targets`` (int array [n_users]). With r the 1-based rank of the target in the list (r = inf
when absent from the first K):

- Recall@K = 1[r <= K]  (= hit rate with one relevant item)
- NDCG@K   = 1[r <= K] / log2(r + 1)  (the ideal DCG is 1 with one relevant item)
- MRR@K    = 1[r <= K] / r

averaged over users. Segments split users by their full sequence length n: cold-start
n <= cold_max, regular cold_max < n <= power_min, power n > power_min (the paper: 5 and h).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.config import EvalConfig, RunConfig
from glossrec.io import atomic_write, write_json
from glossrec.rundir import RunDir

# The paper's h per dataset (its Table 5): about 10% power users.
PAPER_POWER_MIN = {"beauty": 14, "toys": 13, "sports": 13}
SEGMENTS = ("cold", "regular", "power")


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target in its row, np.inf where absent."""
    ranked = np.asarray(ranked)
    hit = ranked == np.asarray(targets)[:, None]
    found = hit.any(axis=1)
    ranks = np.full(len(ranked), np.inf)
    ranks[found] = hit[found].argmax(axis=1) + 1
    return ranks


def recall_at(ranks: np.ndarray, k: int) -> np.ndarray:
    return (ranks <= k).astype(np.float64)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros(len(ranks))
    m = ranks <= k
    out[m] = 1.0 / np.log2(ranks[m] + 1.0)
    return out


def mrr_at(ranks: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros(len(ranks))
    m = ranks <= k
    out[m] = 1.0 / ranks[m]
    return out


METRICS = {"recall": recall_at, "ndcg": ndcg_at, "mrr": mrr_at}


def per_user_metrics(ranks: np.ndarray, cutoffs: Sequence[int]) -> dict[str, np.ndarray]:
    return {f"{name}@{k}": fn(ranks, k) for k in cutoffs for name, fn in METRICS.items()}


def power_threshold(lengths: np.ndarray, dataset_name: str, cfg: EvalConfig) -> int:
    """The h of the segments: configured, else the paper's for its datasets, else the 90th pct."""
    if cfg.power_min is not None:
        return cfg.power_min
    if dataset_name.lower() in PAPER_POWER_MIN:
        return PAPER_POWER_MIN[dataset_name.lower()]
    return max(int(np.percentile(lengths, 90)), cfg.cold_max)


def segment_labels(lengths: np.ndarray, cold_max: int, power_min: int) -> np.ndarray:
    lengths = np.asarray(lengths)
    return np.where(lengths <= cold_max, "cold", np.where(lengths <= power_min, "regular", "power"))


def summarize(per_user: dict[str, np.ndarray], segments: np.ndarray | None = None) -> dict[str, Any]:
    """Means overall and per segment, with user counts."""
    n = len(next(iter(per_user.values()))) if per_user else 0
    out: dict[str, Any] = {"overall": {"users": n, **{m: float(v.mean()) if n else 0.0
                                                        for m, v in per_user.items()}}}
    if segments is not None:
        for seg in SEGMENTS:
            mask = segments == seg
            cnt = int(mask.sum())
            out[seg] = {"users": cnt, **{m: float(v[mask].mean()) if cnt else 0.0
                                         for m, v in per_user.items()}}
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over users."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        means[b] = values[rng.integers(0, len(values), len(values))].mean()
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


@dataclass
class Evaluation:
    """Everything an evaluated run writes: per-user ranks and the summary."""

    user_ids: list[str]
    targets: np.ndarray
    ranked: np.ndarray
    scores: np.ndarray
    lengths: np.ndarray
    metrics: dict[str, Any]
    per_user: dict[str, np.ndarray]


def evaluate(user_ids: Sequence[str], targets: np.ndarray, ranked: np.ndarray,
             scores: np.ndarray, lengths: np.ndarray, cfg: EvalConfig,
             dataset_name: str = "") -> Evaluation:
    targets = np.asarray(targets)
    lengths = np.asarray(lengths)
    ranks = target_ranks(ranked, targets)
    per_user = per_user_metrics(ranks, cfg.cutoffs)
    h = power_threshold(lengths, dataset_name, cfg)
    segs = segment_labels(lengths, cfg.cold_max, h)
    metrics = summarize(per_user, segs)
    metrics["segments"] = {"cold_max": cfg.cold_max, "power_min": h}
    return Evaluation(list(user_ids), targets, np.asarray(ranked), np.asarray(scores), lengths,
                      metrics, per_user)


def write_run(run_dir: Path, ev: Evaluation, item_ids: Sequence[str], cfg: RunConfig,
              extra: dict[str, Any] | None = None) -> None:
    """metrics.json, rankings.jsonl and config.toml, each written atomically."""
    rd = RunDir(run_dir)
    rd.path.mkdir(parents=True, exist_ok=True)
    with atomic_write(rd.rankings) as f:
        for u, uid in enumerate(ev.user_ids):
            row = ev.ranked[u]
            keep = row >= 0
            f.write(json.dumps({
                "user_id": uid,
                "target": item_ids[int(ev.targets[u])],
                "items": [item_ids[int(i)] for i in row[keep]],
                "scores": [round(float(s), 6) for s in ev.scores[u][keep]],
            }, ensure_ascii=False) + "\n")
    metrics = dict(ev.metrics)
    if extra:
        metrics.update(extra)
    write_json(rd.metrics, metrics)
    rd.write_config(cfg)


def format_table(rows: dict[str, dict[str, Any]], metrics: Sequence[str] = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "mrr@10")) -> str:
    """A plain-text table: one row per named result (its 'overall' block or a flat dict)."""
    header = ["run", "users", *metrics]
    lines = [header]
    for name, res in rows.items():
        block = res.get("overall", res)
        lines.append([name, str(block.get("users", "")),
                      *[f"{block[m]:.4f}" if m in block else "-" for m in metrics]])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    out = []
    for j, r in enumerate(lines):
        out.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_segments(metrics: dict[str, Any], names: Sequence[str] = ("recall@5", "ndcg@5")) -> str:
    rows = {seg: metrics[seg] for seg in ("overall", *SEGMENTS) if seg in metrics}
    return format_table({k: v for k, v in rows.items()}, names)
