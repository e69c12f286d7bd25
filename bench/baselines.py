"""Baselines on glossrec's own split, and the hybrid, on all test users of each dataset.

For each dataset: item popularity, item-kNN and SASRec-CE (trained on the split's training
sequences, SASRec early-stopped on validation users), Last-Item Search with BM25, and the hybrid
(weighted rrf of LIS-BM25, SASRec and item-kNN, weights tuned on validation users), each scored
with history kept (the paper's rule) and excluded. Then `glossrec compare` tests every run
against LIS-BM25 and the hybrid against the best single model (paired t-test, Holm-corrected).

Records the training time and peak RSS of each model and the hybrid's tuning and ranking time.
Resumable: a run directory with metrics.json is read back, a trained model is reused.

Run alone on an idle machine (about an hour for the three datasets on 2 cores):
  .venv/bin/python bench/baselines.py --datasets beauty toys sports
Writes bench/results/baselines.json and a table; run directories under runs/baselines/.
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
from _common import RESULTS, ROOT, machine, peak_rss_mb, reset_peak_rss, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "amazon2014"
PAPER = {  # the paper's Table 2 (Recall@5, NDCG@5), history kept
    "beauty": {"sasrec": (0.0538, 0.0320), "lis-bm25": (0.0433, 0.0232), "gloss-8b": (0.0681, 0.0442),
               "bsarec": (0.0736, 0.0523)},
}
SINGLES = ("pop", "itemknn", "sasrec", "lis-bm25")


def _timed(fn: Any) -> tuple[Any, float, float]:
    reset_peak_rss()
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 1), round(peak_rss_mb(), 1)


def dataset_rows(name: str, runs: Path, data_root: Path = DATA, sets: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    from glossrec.compare import compare, read_run
    from glossrec.config import load_config
    from glossrec.pipeline import load_data, run_baseline, run_hybrid, run_lis
    from glossrec.rundir import RunDir

    base = load_config(None, {"data.path": str(data_root / name), "retrieve.retriever": "bm25",
                              **(sets or {})})
    ds = load_data(base)
    info: dict[str, Any] = {"dataset": name, "users": None, "timing": {}, "rules": {}}
    for excl in (False, True):
        rule = "excluded" if excl else "kept"
        cfg = base.updated(retrieve={"exclude_history": excl})
        folder = runs / name / rule
        res: dict[str, Any] = {}
        for kind in ("pop", "itemknn", "sasrec"):
            out = folder / kind
            kept_model = RunDir(runs / name / "kept" / kind).baseline
            if excl and kept_model.is_dir() and not RunDir(out).baseline.is_dir():
                shutil.copytree(kept_model, RunDir(out).baseline)  # one model, two scorings
            if not RunDir(out).metrics.is_file():
                _, sec, rss = _timed(lambda: run_baseline(cfg, kind, out, ds))
                if not excl:
                    info["timing"][kind] = {"seconds": sec, "peak_rss_mb": rss}
            res[kind] = json.loads(RunDir(out).metrics.read_text())
            if not excl and kind not in info["timing"]:  # trained by an earlier, killed run
                info["timing"][kind] = {"seconds": res[kind]["timing_s"]["fit"], "peak_rss_mb": None}
        out = folder / "lis-bm25"
        if not RunDir(out).metrics.is_file():
            run_lis(cfg, out, ds)
        res["lis-bm25"] = json.loads(RunDir(out).metrics.read_text())
        out = folder / "hybrid"
        if not RunDir(out).metrics.is_file():
            _, sec, rss = _timed(lambda: run_hybrid(cfg, [folder / "sasrec", folder / "itemknn"], out, ds=ds))
            info["timing"][f"hybrid_{rule}"] = {"seconds": sec, "peak_rss_mb": rss}
        res["hybrid"] = json.loads(RunDir(out).metrics.read_text())
        names = [*SINGLES, "hybrid"]
        ranked = [read_run(folder / n) for n in names]
        best = max(SINGLES, key=lambda n: res[n]["overall"]["recall@5"])
        vs_lis = compare(ranked, "lis-bm25", ["recall@5", "ndcg@5"])
        vs_best = compare([r for r in ranked if r.name in (best, "hybrid")], best, ["recall@5", "ndcg@5"])
        info["users"] = vs_lis.users
        info["rules"][rule] = {
            "metrics": {n: {m: res[n]["overall"][m] for m in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")}
                        for n in names},
            "vs_lis": vs_lis.as_dict(), "best_single": best, "hybrid_vs_best": vs_best.as_dict(),
            "hybrid_weights": res["hybrid"].get("weights"), "hybrid_rrf_k": res["hybrid"].get("rrf_k"),
            "sasrec_fit": res["sasrec"].get("fit")}
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["beauty", "toys", "sports"])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "baselines")
    p.add_argument("--json", type=Path, default=RESULTS / "baselines.json")
    p.add_argument("--data-root", type=Path, default=DATA)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (a smoke test: --set sasrec.epochs=2)")
    args = p.parse_args(argv)
    sets = dict(kv.split("=", 1) for kv in args.sets)
    before = machine()
    old = json.loads(args.json.read_text()).get("datasets", {}) if args.json.exists() else {}
    done: dict[str, Any] = dict(old)
    for name in args.datasets:
        done[name] = dataset_rows(name, args.runs, args.data_root, sets)
        write_results(args.json, {"datasets": done, "paper": PAPER}, before)
    print(f"load average {before['load_avg_1m']} before; {args.json}")
    print("| dataset | history | method | R@5 | N@5 | R@10 | N@10 | vs LIS-BM25 (R@5, N@5) |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for name, info in done.items():
        for rule, r in info["rules"].items():
            for method, m in r["metrics"].items():
                cmp = r["vs_lis"]
                marks = "" if method == "lis-bm25" else ", ".join(
                    f"{'+' if m[k] > r['metrics']['lis-bm25'][k] else '-'}"
                    f"{'*' if cmp['p_adjusted'][method][k] < cmp['alpha'] else ''}"
                    for k in ("recall@5", "ndcg@5"))
                print(f"| {name} | {rule} | {method} | {m['recall@5']:.4f} | {m['ndcg@5']:.4f} | "
                      f"{m['recall@10']:.4f} | {m['ndcg@10']:.4f} | {marks} |")
            hb = r["hybrid_vs_best"]
            print(f"| {name} | {rule} | hybrid vs {r['best_single']} | p_adj R@5 "
                  f"{hb['p_adjusted']['hybrid']['recall@5']:.2g}, N@5 {hb['p_adjusted']['hybrid']['ndcg@5']:.2g} |||||")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
