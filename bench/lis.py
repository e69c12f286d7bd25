"""The README's LIS table: BM25 and dense LIS, with and without exclude-history, on the datasets.

Each dataset's index is built once per retriever and shared by both history settings. Same
numbers as `glossrec lis --data DIR --retriever R [--exclude-history] --out RUN`, which is the
command the README gives per row. Writes bench/results/lis.json.

    .venv/bin/python bench/lis.py [--datasets beauty toys sports] [--retrievers bm25 dense]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from glossrec.config import load_config
from glossrec.pipeline import build_index, load_data, run_lis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, write_results  # noqa: E402
SHARED = ROOT / ".." / "shared" / "data" / "amazon2014"
PAPER = {("beauty", "bm25"): (0.0433, 0.0232), ("toys", "bm25"): (0.0521, 0.0267),
         ("sports", "bm25"): (0.0212, 0.0110), ("beauty", "dense"): (0.0418, 0.0224),
         ("toys", "dense"): (0.0553, 0.0288), ("sports", "dense"): (0.0212, 0.0112)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["beauty", "toys", "sports"])
    ap.add_argument("--retrievers", nargs="+", default=["bm25", "dense"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "lis.json"))
    args = ap.parse_args()
    before = machine()
    rows = []
    for name in args.datasets:
        cfg = load_config(None, {"data.path": str(SHARED / name)})
        ds = load_data(cfg)
        for kind in args.retrievers:
            kcfg = cfg.updated(retrieve={"retriever": kind})
            t0 = time.perf_counter()
            index = build_index(kcfg, ds)
            t_index = time.perf_counter() - t0
            for excl in (False, True):
                t0 = time.perf_counter()
                ev = run_lis(kcfg.updated(retrieve={"retriever": kind, "exclude_history": excl}), None, ds, index)
                o = ev.metrics["overall"]
                paper = PAPER.get((name, kind)) if not excl else None
                rows.append({"dataset": name, "retriever": kind, "exclude_history": excl,
                             "users": o["users"], "recall@5": o["recall@5"], "ndcg@5": o["ndcg@5"],
                             "recall@10": o["recall@10"], "ndcg@10": o["ndcg@10"],
                             "paper": paper, "index_s": round(t_index, 1),
                             "search_s": round(time.perf_counter() - t0, 1)})
                r = rows[-1]
                print(f"{name:7} {kind:6} excl={excl!s:5} users={r['users']} R@5={r['recall@5']:.4f} "
                      f"N@5={r['ndcg@5']:.4f} R@10={r['recall@10']:.4f} N@10={r['ndcg@10']:.4f} "
                      f"paper={paper} index {r['index_s']}s search {r['search_s']}s", flush=True)
    out = write_results(Path(args.out), {"encoder": cfg.retrieve.encoder, "rows": rows}, before)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
