"""The served run's report, as the web page shows it: each scored result's metrics with 95%
bootstrap confidence intervals.

A scored run directory holds ``metrics.json`` (means overall and per user segment) and
``rankings.jsonl`` (each user's target and ranked items); a full ``glossrec run`` also holds its
baselines in ``lis-<retriever>/`` and ``gloss-<retriever>/`` and ``report.png``
(:func:`glossrec.pipeline.write_report`). The means are metrics.json's. The intervals are
computed here from rankings.jsonl with the evaluation's own per-user metrics and bootstrap
(:mod:`glossrec.evaluate`, same seed), so they are the intervals report.md prints. A run that
was never scored (``glossrec index``) has an empty report.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from glossrec.config import RetrieveConfig
from glossrec.errors import DataError, GlossrecError
from glossrec.io import read_json
from glossrec.rundir import RunDir

CI_LEVEL = 0.95
RETRIEVERS: tuple[str, ...] = get_args(RetrieveConfig.model_fields["retriever"].annotation)


@dataclass(frozen=True)
class Metric:
    name: str
    mean: float
    ci: tuple[float, float] | None
    """The 95% bootstrap interval over users; None without rankings.jsonl."""


@dataclass(frozen=True)
class Segment:
    name: str
    users: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class ScoredResult:
    name: str
    """As report.md names it: GLoSS-<retriever>, LIS-<retriever>, or the folder's name."""
    folder: str
    """Relative to the run directory ("." for the run itself)."""
    users: int
    metrics: list[Metric]
    segments: list[Segment]


@dataclass(frozen=True)
class RunReport:
    run: str
    results: list[ScoredResult]
    has_png: bool


def scored_dirs(run_dir: Path) -> list[tuple[str, RunDir]]:
    """(name, run directory) of every scored result in a run, in report.md's order: the run
    itself, then the GLoSS texts through other retrievers, then the LIS baselines."""
    rd = RunDir(run_dir)
    out: list[tuple[str, RunDir]] = []
    if rd.metrics.is_file():
        out.append((_own_name(rd), rd))
    out += [(f"GLoSS-{k}", rd.gloss(k)) for k in RETRIEVERS if rd.gloss(k).metrics.is_file()]
    out += [(f"LIS-{k}", rd.lis(k)) for k in RETRIEVERS if rd.lis(k).metrics.is_file()]
    return out


def _own_name(rd: RunDir) -> str:
    """A run that generated texts is GLoSS-<retriever> in its report; any other its folder."""
    if rd.generations("test").is_file() and rd.is_run():
        try:
            return f"GLoSS-{rd.read_config().retrieve.retriever}"
        except GlossrecError:  # an unreadable config still leaves the scores to show
            pass
    return rd.path.resolve().name


_cache: dict[tuple[Any, ...], RunReport] = {}
_cache_lock = threading.Lock()


def read_report(run_dir: str | Path) -> RunReport:
    """The run's report; recomputed only when one of its files changed (bootstrapping many
    users' metrics takes a moment)."""
    run_dir = Path(run_dir)
    dirs = scored_dirs(run_dir)
    png = RunDir(run_dir).report_png
    stamp = (_stamp(png), *(_stamp(p) for _, d in dirs for p in (d.metrics, d.rankings)))
    with _cache_lock:
        hit = _cache.get(stamp)
    if hit is None:
        hit = RunReport(run_dir.resolve().name, [_result(name, d, run_dir) for name, d in dirs],
                        png.is_file())
        with _cache_lock:
            _cache.clear()  # one run is served: only its latest state is worth keeping
            _cache[stamp] = hit
    return hit


def _stamp(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (str(path), -1, -1)
    return (str(path), st.st_mtime_ns, st.st_size)


def _result(name: str, rd: RunDir, run_dir: Path) -> ScoredResult:
    obj = read_json(rd.metrics)
    overall = obj.get("overall") if isinstance(obj, dict) else None
    if not isinstance(overall, dict):
        raise DataError("no 'overall' metrics", rd.metrics)
    means = {k: float(v) for k, v in overall.items() if k != "users" and _number(v)}
    per_user = _per_user(rd, means) if rd.rankings.is_file() else {}
    metrics = [Metric(m, mean, _ci(per_user[m]) if m in per_user else None) for m, mean in means.items()]
    segments = [Segment(seg, int(block.get("users", 0)),
                        {k: float(v) for k, v in block.items() if k != "users" and _number(v)})
                for seg, block in obj.items()
                if seg not in ("overall", "segments") and isinstance(block, dict) and "users" in block]
    folder = "." if rd.path == run_dir else str(rd.path.relative_to(run_dir))
    return ScoredResult(name, folder, int(overall.get("users", 0)), metrics, segments)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _per_user(rd: RunDir, means: dict[str, float]) -> dict[str, np.ndarray]:
    """Each user's value of every metric named `<name>@<cutoff>`, from rankings.jsonl."""
    from glossrec.compare import read_run
    from glossrec.evaluate import per_user_metrics

    run = read_run(rd.path)
    ranks = np.array([items.index(t) + 1.0 if t in items else np.inf for t, items in run.users.values()])
    cutoffs = sorted({int(c) for m in means for _, _, c in [m.partition("@")] if c.isdigit()})
    return per_user_metrics(ranks, cutoffs)


def _ci(values: np.ndarray) -> tuple[float, float]:
    from glossrec.evaluate import bootstrap_ci

    return bootstrap_ci(values, alpha=1 - CI_LEVEL)
