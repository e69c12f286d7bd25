"""Runs side by side: the same users, paired significance tests, TREC export.

Every scored run directory holds ``rankings.jsonl`` (user, target, ranked items). Comparing runs
means scoring them on the users they all share (the same target for each, else the runs used
different splits) and testing each run against a chosen baseline, user by user:

- means and per-user scores, and each pair's p-value, come from ranx (``ranx.compare``:
  two-sided paired Student's t-test, or Fisher's randomization test);
- the p-values of all (run, metric) tests against the baseline form one family, corrected by
  Holm-Bonferroni (Holm, 1979): with the m p-values sorted ascending p_(1) <= ... <= p_(m),
  ``p_adj_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j))``; a difference is significant when
  p_adj < alpha;
- each run's difference from the baseline comes with its paired bootstrap 95% CI: users are
  resampled with replacement, both runs' scores of a user kept together, and the CI is the
  2.5th-97.5th percentile of the mean per-user difference over the resamples
  (:func:`glossrec.evaluate.bootstrap_ci` on the per-user differences; 1,000 resamples, seed 0).
  A difference whose CI lies above 0 is the one a claim of "beats" needs.

ranx computes Recall@K and NDCG@K with the same definitions as :mod:`glossrec.evaluate` (one
relevant item per user), so its means equal the runs' metrics.json on the same users (a test
checks this).

TREC export: a run file per run (``user Q0 item rank score name``) and one qrels file
(``user 0 target 1``), readable by ranx, ir-measures and trec_eval. The score column is
``K + 1 - rank`` so that every reader, whatever its tie rule, reproduces glossrec's order; the
models' own scores stay in rankings.jsonl.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from glossrec.errors import ConfigError, DataError, import_optional
from glossrec.evaluate import bootstrap_ci
from glossrec.io import atomic_write, iter_jsonl
from glossrec.rundir import RunDir

StatTest = Literal["student", "fisher"]


@dataclass
class RankedRun:
    """A run's rankings: user -> (target item id, ranked item ids)."""

    name: str
    path: Path
    users: dict[str, tuple[str, list[str]]]


def read_run(run_dir: Path, name: str | None = None) -> RankedRun:
    """RUN/rankings.jsonl (written by every scored run); errors name the file, line and field."""
    path = RunDir(run_dir).rankings
    if not path.is_file():
        raise DataError(f"no {path.name}: not a scored run (glossrec lis / baseline / run write one)", path)
    users: dict[str, tuple[str, list[str]]] = {}
    for lineno, obj in iter_jsonl(path):
        for key, kind in (("user_id", str), ("target", str), ("items", list)):
            if not isinstance(obj.get(key), kind):
                raise DataError(f"field '{key}' must be a {kind.__name__}", path, lineno)
        users[obj["user_id"]] = (obj["target"], [str(i) for i in obj["items"]])
    return RankedRun(name or Path(run_dir).name, Path(run_dir), users)


def shared_users(runs: Sequence[RankedRun]) -> list[str]:
    """Users present in every run, in the first run's order; a user whose target differs
    between runs is an error (the runs were scored on different splits or datasets)."""
    if not runs:
        return []
    common = set(runs[0].users).intersection(*(r.users for r in runs[1:]))
    for u in common:
        targets = {r.users[u][0] for r in runs}
        if len(targets) > 1:
            raise DataError(f"user {u} has different targets in the runs ({sorted(targets)}): "
                            "they were scored on different splits", runs[0].path)
    return [u for u in runs[0].users if u in common]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order (module docstring)."""
    p = np.asarray(p_values, dtype=np.float64)
    p = np.where(np.isnan(p), 1.0, p)  # a t-test of identical scores: no evidence of a difference
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def _ranx_run(run: RankedRun, users: Sequence[str]) -> Any:
    ranx = import_optional("ranx", "compare", "glossrec compare")
    # A user with an empty list is left out here and counted as all-zero by make_comparable.
    d = {u: {item: float(len(items) - r) for r, item in enumerate(items)}
         for u in users if (items := run.users[u][1])}
    return ranx.Run.from_dict(d, name=run.name)


def _ranx_qrels(runs: Sequence[RankedRun], users: Sequence[str]) -> Any:
    ranx = import_optional("ranx", "compare", "glossrec compare")
    return ranx.Qrels.from_dict({u: {runs[0].users[u][0]: 1} for u in users})


@dataclass
class Comparison:
    """Means per run and metric; p-values of each run against the baseline, raw and corrected."""

    users: int
    baseline: str
    metrics: list[str]
    stat_test: str
    alpha: float
    means: dict[str, dict[str, float]]
    p_values: dict[str, dict[str, float]] = field(default_factory=dict)
    p_adjusted: dict[str, dict[str, float]] = field(default_factory=dict)
    diff_ci95: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    """Paired bootstrap 95% CI of (run - baseline) per metric."""

    def significant(self, run: str, metric: str) -> bool:
        p = self.p_adjusted.get(run, {}).get(metric)
        return p is not None and p < self.alpha

    def as_dict(self) -> dict[str, Any]:
        return {"users": self.users, "baseline": self.baseline, "metrics": self.metrics,
                "stat_test": self.stat_test, "alpha": self.alpha, "correction": "holm",
                "means": self.means, "p_values": self.p_values, "p_adjusted": self.p_adjusted,
                "diff_ci95": {n: {m: list(ci) for m, ci in row.items()}
                              for n, row in self.diff_ci95.items()}}

    def table(self) -> str:
        """Markdown: one row per run; ``*`` marks a corrected-significant difference from the
        baseline (``+`` better / ``-`` worse); p_adj, the difference and its paired bootstrap
        95% CI in brackets."""
        head = "| run | " + " | ".join(self.metrics) + " |"
        lines = [f"{self.users} shared users; {self.stat_test} test vs {self.baseline}, "
                 f"Holm-corrected, alpha {self.alpha}", "", head,
                 "|---|" + "---:|" * len(self.metrics)]
        for name, row in self.means.items():
            cells = []
            for m in self.metrics:
                cell = f"{row[m]:.4f}"
                if name != self.baseline:
                    diff = row[m] - self.means[self.baseline][m]
                    mark = ("+*" if diff > 0 else "-*") if self.significant(name, m) else ""
                    lo, hi = self.diff_ci95[name][m]
                    cell += (f"{mark} (p={self.p_adjusted[name][m]:.3g}; {diff:+.4f} "
                             f"[{lo:+.4f}, {hi:+.4f}])")
                cells.append(cell)
            lines.append(f"| {name}{' (baseline)' if name == self.baseline else ''} | "
                         + " | ".join(cells) + " |")
        return "\n".join(lines)


def compare(runs: Sequence[RankedRun], baseline: str | None = None,
            metrics: Sequence[str] = ("recall@5", "ndcg@5", "recall@10", "ndcg@10"),
            stat_test: StatTest = "student", alpha: float = 0.05, seed: int = 42,
            n_permutations: int = 1000) -> Comparison:
    """Score `runs` on their shared users and test each against `baseline` (default: the first)."""
    ranx = import_optional("ranx", "compare", "glossrec compare")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"two runs share a name: {names}; give each a different folder name")
    if len(runs) < 2:
        raise ConfigError("compare needs at least two runs")
    baseline = baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"baseline {baseline!r} is not one of the runs ({', '.join(names)})")
    users = shared_users(runs)
    if not users:
        raise DataError("the runs share no user", runs[0].path)
    qrels = _ranx_qrels(runs, users)
    ranx_runs = [_ranx_run(r, users) for r in runs]
    report = ranx.compare(qrels, ranx_runs, list(metrics),
                          stat_test=stat_test, n_permutations=n_permutations, max_p=alpha,
                          random_seed=seed, make_comparable=True)
    means = {n: {m: float(report.results[n][m]) for m in metrics} for n in names}
    tested = [(n, m) for n in names if n != baseline for m in metrics]
    raw = [float(report.comparisons[frozenset([baseline, n])][m]["p_value"]) for n, m in tested]
    adj = holm(raw)
    out = Comparison(len(users), baseline, list(metrics), stat_test, alpha, means)
    scores = {r.name: r.scores for r in ranx_runs}  # per metric, per user (filled by ranx)
    for (n, m), p, pa in zip(tested, raw, adj):
        out.p_values.setdefault(n, {})[m] = p
        out.p_adjusted.setdefault(n, {})[m] = float(pa)
        diff = np.array([scores[n][m].get(u, 0.0) - scores[baseline][m].get(u, 0.0)
                         for u in users])  # absent: an empty list, scored 0
        out.diff_ci95.setdefault(n, {})[m] = bootstrap_ci(diff)
    return out


def write_trec(folder: Path, runs: Sequence[RankedRun], users: Sequence[str] | None = None) -> list[Path]:
    """FOLDER/<run>.run for each run and FOLDER/qrels.txt, on the shared users; atomic writes."""
    users = list(users) if users is not None else shared_users(runs)
    folder = Path(folder)
    written = []
    with atomic_write(folder / "qrels.txt") as f:
        for u in users:
            f.write(f"{u} 0 {runs[0].users[u][0]} 1\n")
    written.append(folder / "qrels.txt")
    for run in runs:
        path = folder / f"{run.name}.run"
        with atomic_write(path) as f:
            for u in users:
                items = run.users[u][1]
                for r, item in enumerate(items, start=1):
                    f.write(f"{u} Q0 {item} {r} {len(items) + 1 - r} {run.name}\n")
        written.append(path)
    return written
