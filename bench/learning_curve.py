"""The learning curve of GLoSS-135M on CPU: validation Recall@5 / NDCG@5 against training
examples seen, beside Last-Item Search on the same validation users.

One training run (``--config``, e.g. configs/smollm2-beauty.toml) is extended point by point:
for each ``--points`` value N, training continues to N optimizer steps (a constant learning
rate after warm-up, so extending a run does not restart a decay), the adapter is copied to
``RUN/curve/step-N/adapter``, the config's generation (catalog-grounded beams) runs for the
fixed sample of validation users (their second-to-last item is the target: never a training
target), and the texts are scored like test rows. Point 0 is the untrained model. Every part
resumes after a kill: training from its checkpoint, generation from its file, finished points
are read back. No test user is looked at.

Run alone on an idle machine:
  .venv/bin/python bench/learning_curve.py --config configs/smollm2-beauty.toml \
      --run runs/smollm2-beauty --points 0 50 100 200
Writes bench/results/learning_curve.json, bench/results/learning_curve.png, and a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, code_version, machine, save_json, write_results  # noqa: E402


def _scores(ev: Any) -> dict[str, float]:
    from glossrec.evaluate import bootstrap_ci

    m = ev.metrics["overall"]
    lo, hi = bootstrap_ci(ev.per_user["recall@5"])
    return {"recall@5": m["recall@5"], "ndcg@5": m["ndcg@5"], "recall@10": m["recall@10"],
            "ndcg@10": m["ndcg@10"], "recall@5_ci": [lo, hi], "users": len(ev.user_ids)}


def _train_to(cfg: Any, run_dir: Path, steps: int) -> dict[str, Any]:
    from glossrec.train import train_from_config

    res = train_from_config(cfg.updated(train={"max_steps": steps}), run_dir)
    meta = json.loads((res.adapter_dir / "glossrec_train.json").read_text())
    valid = [h for h in res.history if "valid_loss" in h]
    return {"steps": res.steps, "examples_seen": meta["examples_seen_total"],
            "best_step": res.best_step, "valid_loss": valid[-1]["valid_loss"] if valid else None,
            "valid_loss_first": valid[-1].get("valid_loss_first") if valid else None,
            "train_seconds": round(max(h.get("seconds", 0.0) for h in res.history), 1)}


def train_point(cfg: Any, run_dir: Path, steps: int) -> dict[str, Any]:
    """Train to `steps` and keep the adapter as the point's ``curve/step-N/adapter``. A run
    that stopped early (train.patience) before `steps` is an error: its adapter is not step N."""
    info = _train_to(cfg, run_dir, steps)
    if info["steps"] < steps:
        raise SystemExit(f"{run_dir}: training stopped at step {info['steps']} before point "
                         f"{steps} (early stopping: train.patience validations without a better "
                         "validation loss); the point is not made")
    folder = run_dir / "curve" / f"step-{steps:06d}"
    adapter = folder / "adapter"
    if not adapter.is_dir():
        tmp = folder / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(run_dir / "adapter", tmp)
        tmp.rename(adapter)
    return info


def generations_name(decode: dict[str, str]) -> str:
    """The point's generations file for these generate.* settings: variants that differ only in
    retrieval share one generation (the file's fingerprint is checked when it is reused)."""
    if not decode:
        return "generations.jsonl"
    return "generations-" + "-".join(f"{k}-{v}" for k, v in sorted(decode.items())) + ".jsonl"


def point(cfg: Any, run_dir: Path, steps: int, ds: Any, examples: list, index: Any,
          label: str | None = None, decode: dict[str, str] | None = None) -> dict[str, Any]:
    """Train to `steps`, generate for the validation users, score (history excluded and kept).
    With a `label` (a variant): no training, the point's adapter as it was saved, and the
    generations of its `decode` settings."""
    from glossrec.generate import generate_examples, read_generations
    from glossrec.pipeline import run_retrieve

    folder = run_dir / "curve" / f"step-{steps:06d}"
    info: dict[str, Any] = {"steps": steps, "examples_seen": 0}
    adapter = None
    if steps > 0 and label is not None:
        adapter = folder / "adapter"
        meta = json.loads((adapter / "glossrec_train.json").read_text())
        info["examples_seen"] = meta["examples_seen_total"]
    elif steps > 0:
        info.update(train_point(cfg, run_dir, steps))
        adapter = folder / "adapter"
    t0 = time.perf_counter()
    gens_path = folder / generations_name(decode or {})
    generate_examples(cfg, examples, ds.catalog, adapter, gens_path)
    info["generate_s_per_user"] = round((time.perf_counter() - t0) / len(examples), 3)
    gens = read_generations(gens_path)
    queries = {e.user_id: gens[e.user_id] for e in examples}
    for excl in (True, False):
        rcfg = cfg.updated(retrieve={"exclude_history": excl})
        key = "history_excluded" if excl else "history_kept"
        info[key] = _scores(run_retrieve(rcfg, queries, None, ds, index))
    info["texts_per_user"] = sum(len(t) for t in queries.values()) / len(queries)
    return info


def plot(path: Path, points: list[dict[str, Any]], lis: dict[str, Any],
         variants: dict[str, Any] | None = None) -> None:
    """The curve (history excluded and kept), each decoding variant scored at two or more
    points (history excluded), and LIS-BM25's level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = [max(p["examples_seen"], 1) for p in points]
    for ax, metric in zip(axes, ("recall@5", "ndcg@5")):
        for key, style in (("history_excluded", "o-"), ("history_kept", "s--")):
            ax.plot(xs, [p[key][metric] for p in points], style, label=f"GLoSS-135M (plain beams), {key.replace('_', ' ')}")
            ax.axhline(lis[key][metric], color="gray", ls=":" if key == "history_kept" else "-",
                       lw=1, label=f"LIS-BM25, {key.replace('_', ' ')}")
        for label, v in (variants or {}).items():
            vp = v["points"]
            if len(vp) >= 2:
                ax.plot([max(q["examples_seen"], 1) for q in vp],
                        [q["history_excluded"][metric] for q in vp], "^-",
                        label=f"GLoSS-135M ({label}), history excluded")
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlabel("training examples seen")
        ax.set_title(f"validation {metric} ({points[0]['history_excluded']['users']} users)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def with_continued(variants: dict[str, Any], paths: list[Path]) -> dict[str, Any]:
    """`variants` plus one series per decoding variant of the runs continued from this curve's
    adapters (their results JSONs, e.g. the decay stretches): another lineage of weights, so
    drawn apart, in order of examples seen."""
    out = dict(variants)
    for path in paths:
        for label, v in json.loads(path.read_text()).get("variants", {}).items():
            series = out.setdefault(f"{label}, continued runs", {"points": []})
            series["points"] = sorted(series["points"] + v["points"],
                                      key=lambda q: q["examples_seen"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "smollm2-beauty.toml")
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "smollm2-beauty")
    p.add_argument("--points", type=int, nargs="+", default=[0, 50, 100, 200])
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                   help="config overrides of a recipe arm, e.g. train.loss=full (give it its own "
                   "--run and --json)")
    p.add_argument("--valid-users", type=int, default=200)
    p.add_argument("--json", type=Path, default=None,
                   help="results JSON (default bench/results/learning_curve.json); with "
                   "--train-only, where the trained points are kept (only when given)")
    p.add_argument("--variant", metavar="LABEL", help="score a decoding variant at points already "
                   "trained (with --decode), into the JSON's variants[LABEL]")
    p.add_argument("--decode", nargs="*", default=[], metavar="KEY=VALUE",
                   help="generate.* settings of the variant, e.g. grounded_score=pmi")
    p.add_argument("--retrieve", nargs="*", default=[], metavar="KEY=VALUE",
                   help="retrieve.* settings of the variant, e.g. ranking=rrf (reuses the "
                   "generations of the same --decode)")
    p.add_argument("--train-only", action="store_true",
                   help="train to each point and keep its adapter, scoring nothing (score the "
                   "points later with --variant); frees the CPU for training on long stretches")
    p.add_argument("--continued", nargs="*", type=Path, default=[], metavar="JSON",
                   help="results of runs continued from this curve's adapters (e.g. "
                   "bench/results/learning_curve--decay-1.json), drawn as one more series")
    p.add_argument("--plot-only", action="store_true",
                   help="redraw the plot from --json (and --continued); run nothing")
    args = p.parse_args(argv)
    train_json, args.json = args.json, args.json or RESULTS / "learning_curve.json"
    if args.plot_only:
        old = json.loads(args.json.read_text())
        plot(args.json.with_suffix(".png"), old["points"], old["lis_bm25"],
             with_continued(old.get("variants", {}), args.continued))
        return 0

    from glossrec.config import load_config
    from glossrec.pipeline import build_index, load_data, prepare, run_lis

    before = machine()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = load_config(args.config, {**overrides, "evaluate.split": "valid",
                                    "evaluate.users": args.valid_users})
    if args.train_only:
        old = json.loads(train_json.read_text()) if train_json and train_json.exists() else {}
        done = {q["steps"]: q for q in old.get("train_points", [])}
        for steps in sorted(set(args.points) - {0}):
            done[steps] = {"steps": steps, **train_point(cfg, args.run, steps)}
            print(json.dumps(done[steps]), flush=True)
            if train_json:  # train_seconds: the run's wall clock, time paused (SIGSTOP) included
                write_results(train_json, {**old, "config": str(args.config), "overrides": overrides,
                                           "run": str(args.run),
                                           "train_points": [done[k] for k in sorted(done)]}, before)
        return 0
    ds = load_data(cfg)
    examples = prepare(cfg, ds).examples
    index = build_index(cfg, ds)
    lis = {("history_excluded" if excl else "history_kept"):
           _scores(run_lis(cfg.updated(retrieve={"exclude_history": excl}), None, ds, index))
           for excl in (True, False)}
    old = json.loads(args.json.read_text()) if args.json.exists() else {}
    if old.get("config") != str(args.config):
        old = {}
    variants: dict[str, Any] = old.get("variants", {})
    if args.variant:
        decode = dict(kv.split("=", 1) for kv in args.decode)
        rsettings = dict(kv.split("=", 1) for kv in args.retrieve)
        vcfg = cfg.updated(generate=decode, retrieve=rsettings)
        rows = {q["steps"]: q for q in variants.get(args.variant, {}).get("points", [])}
        for steps in sorted(set(args.points)):
            if steps not in rows:
                rows[steps] = point(vcfg, args.run, steps, ds, examples, index, args.variant, decode)
                print(json.dumps(rows[steps]), flush=True)
        # The variant's own provenance; the curve's (date, code, machine) stay as measured.
        variants[args.variant] = {"generate": decode, "retrieve": rsettings, "code": code_version(),
                                  "machine": before, "points": [rows[k] for k in sorted(rows)]}
        save_json(args.json, {**old, "variants": variants})
        if old.get("points"):
            plot(args.json.with_suffix(".png"), old["points"], old["lis_bm25"],
                 with_continued(variants, args.continued))
        return 0
    done: dict[int, dict[str, Any]] = {q["steps"]: q for q in old.get("points", [])}
    points = []
    for steps in sorted(set(args.points)):
        if steps not in done:
            done[steps] = point(cfg, args.run, steps, ds, examples, index)
            print(json.dumps(done[steps]), flush=True)
        points.append(done[steps])
        write_results(args.json, {"config": str(args.config), "overrides": overrides, "run": str(args.run),
                                  "valid_users": len(examples), "lis_bm25": lis,
                                  "points": points, "variants": variants}, before)
    plot(args.json.with_suffix(".png"), points, lis, with_continued(variants, args.continued))
    print(f"\n{len(examples)} validation users; load average {before['load_avg_1m']} before")
    print("| examples seen | valid loss | R@5 excl [95% CI] | N@5 excl | R@5 kept | N@5 kept | s/user |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for q in points:
        e, k = q["history_excluded"], q["history_kept"]
        vl = f"{q['valid_loss']:.3f}" if q.get("valid_loss") is not None else "-"
        print(f"| {q['examples_seen']:,} | {vl} | {e['recall@5']:.4f} [{e['recall@5_ci'][0]:.3f}, "
              f"{e['recall@5_ci'][1]:.3f}] | {e['ndcg@5']:.4f} | {k['recall@5']:.4f} | "
              f"{k['ndcg@5']:.4f} | {q['generate_s_per_user']} |")
    e, k = lis["history_excluded"], lis["history_kept"]
    print(f"| LIS-BM25 | | {e['recall@5']:.4f} [{e['recall@5_ci'][0]:.3f}, {e['recall@5_ci'][1]:.3f}] "
          f"| {e['ndcg@5']:.4f} | {k['recall@5']:.4f} | {k['ndcg@5']:.4f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
