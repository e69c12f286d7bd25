"""A shipped model's whole training lineage as one curve: validation loss against training
examples seen and training hours, run after run, and validation Recall@5 where it was measured.

A shipped model keeps the log of every run in its lineage (``train_log.jsonl``, one ``run``
number per run) and each run's command, machine and paused seconds (``provenance.json``).
Examples are summed over the runs; hours are each run's logged seconds with its paused time
taken out (spread evenly over the run's steps: the log does not say when it was paused). A run's
validation users are its config's ``train.max_valid_examples`` (read from the config its command
names), so a jump between two runs' validation sets shows as a labelled break, not as progress.

Where a run logged it (``train.valid_first_tokens``), the loss of the next item's first tokens
is drawn beside it, dashed.

Recall points come from scored validation runs (``glossrec run ... --set evaluate.split=valid
--set model.weights=NAME``): each run directory's rankings give Recall@5 with a bootstrap CI, at
the examples its weights had seen; its ``lis-bm25`` ranking is drawn as LIS's level.

  .venv/bin/python bench/lineage.py --model smollm2-beauty-wholetext-3 \\
      --recall runs/valid500-fp32 runs/valid500-wholetext-2

``--recall-from`` carries the points of an earlier lineage JSON forward.

Writes bench/results/lineage--MODEL.json and .png, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, write_results, machine  # noqa: E402


def _valid_users(command: str) -> int | None:
    """train.max_valid_examples of the config a run's command names (None if unknown)."""
    found = re.search(r"--config\s+(\S+)", command)
    path = ROOT / found.group(1) if found else None
    if path is None or not path.is_file():
        return None
    from glossrec.config import load_config

    return load_config(path).train.max_valid_examples


def lineage_points(folder: Path) -> list[dict[str, Any]]:
    """One row per validation of every run: run, step, examples and hours so far, loss."""
    from glossrec.io import iter_jsonl

    runs = json.loads((folder / "provenance.json").read_text())["runs"]
    records: dict[int, list[dict[str, Any]]] = {}
    for _, rec in iter_jsonl(folder / "train_log.jsonl"):
        records.setdefault(int(rec.get("run", 0)), []).append(rec)
    rows, examples0, hours0 = [], 0, 0.0
    for r in sorted(records):
        steps = [x for x in records[r] if "loss" in x]
        last_s = max((x["seconds"] for x in steps), default=0.0)
        prov = runs[r] if r < len(runs) else {}
        active = 1 - min(prov.get("paused_s", 0.0), last_s) / last_s if last_s else 1.0
        seen = {x["step"]: (sum(y["examples"] for y in steps if y["step"] <= x["step"]),
                            x["seconds"] * active) for x in steps}
        for v in (x for x in records[r] if "valid_loss" in x):
            ex, sec = seen.get(v["step"], (0, 0.0))
            rows.append({"run": r, "step": v["step"], "examples": examples0 + ex,
                         "hours": round(hours0 + sec / 3600, 3), "valid_loss": v["valid_loss"],
                         "valid_loss_first": v.get("valid_loss_first"),
                         "valid_users": _valid_users(prov.get("command", "")),
                         "machine": prov.get("machine", {})})
        examples0 += sum(x["examples"] for x in steps)
        hours0 += last_s * active / 3600
    return rows


def recall_point(run_dir: Path) -> dict[str, Any]:
    """Recall@5 [95% CI] of a scored validation run, at its weights' examples seen."""
    import numpy as np

    from glossrec import weights
    from glossrec.compare import read_run
    from glossrec.evaluate import bootstrap_ci

    def r5(run: Any) -> tuple[float, list[float]]:
        hits = np.array([t in items[:5] for t, items in run.users.values()], dtype=float)
        return float(hits.mean()), list(bootstrap_ci(hits))

    cfg = tomllib.loads((run_dir / "config.toml").read_text())
    name = cfg["model"].get("weights")
    info = weights.train_info(weights.record_dir(name)) if name else {}
    run = read_run(run_dir)
    mean, ci = r5(run)
    lis = read_run(run_dir / "lis-bm25") if (run_dir / "lis-bm25").is_dir() else None
    return {"run_dir": str(run_dir), "weights": name, "examples": info.get("examples_seen_total"),
            "recall@5": mean, "recall@5_ci": ci, "users": len(run.users),
            "lis_bm25_recall@5": r5(lis)[0] if lis else None,
            "prior_weight": prior_weight(cfg)}


def prior_weight(cfg: dict[str, Any]) -> float | None:
    """The search's prior weight in a run's parsed config.toml."""
    return cfg.get("generate", {}).get("prior_weight")


def with_prior_weight(point: dict[str, Any], default: float | None) -> dict[str, Any]:
    """A carried-forward point from before points recorded the search's prior weight: read it
    from its run's config where that run is at hand, else `default`."""
    if point.get("prior_weight") is None:
        cfg = Path(point["run_dir"]) / "config.toml"
        point["prior_weight"] = (prior_weight(tomllib.loads(cfg.read_text()))
                                 if cfg.is_file() else default)
    return point


def plot(path: Path, model: str, rows: list[dict[str, Any]], recall: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    runs = sorted({x["run"] for x in rows})
    users_of = {r: next(x["valid_users"] for x in rows if x["run"] == r) for r in runs}
    labelled_first = False
    for r in runs:  # one colour per run; labels once, the legend would outgrow the plot
        pts = [x for x in rows if x["run"] == r]
        first = [x for x in pts if x["valid_loss_first"] is not None]
        for ax, key in ((axes[0], "examples"), (axes[1], "hours")):
            line, = ax.plot([x[key] for x in pts], [x["valid_loss"] for x in pts], "o-", ms=3,
                            label="the next item's tokens (a colour per run)" if r == runs[0] else None)
            if first:  # the next item's first tokens, where the grounded search chooses
                ax.plot([x[key] for x in first], [x["valid_loss_first"] for x in first], "s--",
                        ms=3, color=line.get_color(),
                        label=None if labelled_first else "its first tokens only")
        labelled_first = labelled_first or bool(first)
    spans: dict[Any, list[int]] = {}
    for r in runs:
        spans.setdefault(users_of[r], []).append(r)
    axes[0].set_title("validation users: " + "; ".join(
        f"runs {v[0]}-{v[-1]}: {u or '?'}" if len(v) > 1 else f"run {v[0]}: {u or '?'}"
        for u, v in spans.items()), fontsize=8)
    axes[0].set_xlabel("training examples seen")
    axes[1].set_xlabel("training hours (paused time left out; the machines differ per run)")
    for ax in axes[:2]:
        ax.set_ylabel("validation loss, next item's tokens")
    axes[0].legend(fontsize=7, loc="upper right")
    pts = [p for p in recall if p["examples"] is not None]
    for w in sorted({p.get("prior_weight") for p in pts}, key=lambda w: (w is None, w or 0)):
        ws = [p for p in pts if p.get("prior_weight") == w]  # one series per search prior weight
        axes[2].errorbar([p["examples"] for p in ws], [p["recall@5"] for p in ws],
                         yerr=[[p["recall@5"] - p["recall@5_ci"][0] for p in ws],
                               [p["recall@5_ci"][1] - p["recall@5"] for p in ws]],
                         fmt="o", capsize=3,
                         label=f"GLoSS-135M (grounded search, prior weight {'?' if w is None else w})")
    if pts:
        lis = [p["lis_bm25_recall@5"] for p in pts if p["lis_bm25_recall@5"] is not None]
        if lis:
            axes[2].axhline(lis[0], color="gray", lw=1, label="LIS-BM25, same users")
        axes[2].set_xlabel("training examples seen")
        axes[2].set_ylabel(f"validation Recall@5 ({pts[0]['users']} users, history excluded)")
        axes[2].legend(fontsize=7)
    fig.suptitle(f"the lineage of {model}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a shipped model's name (or its folder)")
    p.add_argument("--recall", nargs="*", type=Path, default=[], metavar="RUN_DIR",
                   help="scored validation runs of models of this lineage")
    p.add_argument("--recall-from", type=Path, metavar="LINEAGE_JSON",
                   help="also the Recall points an earlier lineage JSON recorded (their run "
                        "directories need not exist any more)")
    p.add_argument("--carried-prior-weight", type=float, metavar="W",
                   help="the search prior weight of carried points that do not record it and "
                        "whose run directory is gone (default: unknown, drawn as '?')")
    p.add_argument("--json", type=Path, help="default: bench/results/lineage--MODEL.json")
    args = p.parse_args(argv)
    from glossrec import weights

    folder = weights.record_dir(args.model)
    name = Path(folder).name
    out = args.json or RESULTS / f"lineage--{name}.json"
    rows = lineage_points(Path(folder))
    recall = json.loads(args.recall_from.read_text())["recall"] if args.recall_from else []
    recall = ([with_prior_weight(q, args.carried_prior_weight) for q in recall]
              + [recall_point(d) for d in args.recall])
    write_results(out, {"model": name, "validations": rows, "recall": recall}, machine())
    plot(out.with_suffix(".png"), name, rows, recall)
    print("| run | step | examples | hours | validation users | validation loss | first tokens |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for x in rows:
        first = f"{x['valid_loss_first']:.3f}" if x["valid_loss_first"] is not None else ""
        print(f"| {x['run']} | {x['step']} | {x['examples']:,} | {x['hours']:.2f} | "
              f"{x['valid_users'] or '?'} | {x['valid_loss']:.3f} | {first} |")
    for q in recall:
        lo, hi = q["recall@5_ci"]
        print(f"{q['weights']}: {q['examples']} examples, R@5 {q['recall@5']:.3f} [{lo:.3f}, {hi:.3f}]"
              f" on {q['users']} users, prior weight {q['prior_weight']}; LIS-BM25 {q['lis_bm25_recall@5']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
