"""Last-Item Search by the target's place in the sequence: is the last item (the test target)
as hard to find as the second-to-last (the validation target)?

For every user with at least `--min-length` items, target i_{n-d} with history i_1..i_{n-d-1}
for d = 0 (the test example), 1 (the validation example's position), 2, ...: LIS-BM25 with the
history kept and excluded, on the same users at every position, and the paired bootstrap CI
of each position's R@5 and N@5 minus the last position's. A decoding or recipe choice made at
one position transfers to another only as far as the two positions behave alike.

    .venv/bin/python bench/target_position.py [--data DIR] [--positions 4] [--min-length 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from glossrec.config import load_config
from glossrec.evaluate import bootstrap_ci
from glossrec.pipeline import build_index, load_data, run_lis
from glossrec.splits import Example, Splits, validation_users

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, write_results  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "amazon2014" / "beauty"


def position_examples(sequences: list[np.ndarray], users: list[str], d: int,
                      min_length: int) -> list[Example]:
    """Target i_{n-d}, history i_1..i_{n-d-1}, for users with at least min_length items."""
    return [Example(u, tuple(int(x) for x in s[:len(s) - 1 - d]), int(s[len(s) - 1 - d]), len(s))
            for u, s in zip(users, sequences) if len(s) >= min_length]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--positions", type=int, default=4, help="d = 0 .. positions-1")
    ap.add_argument("--min-length", type=int, default=5)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "target_position.json")
    args = ap.parse_args()
    if args.min_length < args.positions + 1:
        raise SystemExit("--min-length must leave every position at least one history item")
    before = machine()
    cfg = load_config(None, {"data.path": str(args.data), "retrieve.retriever": "bm25"})
    ds = load_data(cfg)
    valid_users = validation_users(ds.users, [len(s) for s in ds.sequences], cfg.split)
    index = build_index(cfg, ds)
    rows, hits = [], {}
    for excl in (False, True):
        for d in range(args.positions):
            ex = position_examples(ds.sequences, ds.users, d, args.min_length)
            ev = run_lis(cfg.updated(retrieve={"exclude_history": excl}), None, ds, index,
                         Splits([], [], ex))
            r5, n5 = ev.per_user["recall@5"], ev.per_user["ndcg@5"]
            hits[excl, d] = (r5, n5)
            in_valid = np.array([u in valid_users for u in ev.user_ids])
            row = {"exclude_history": excl, "d": d, "users": len(ex),
                   "recall@5": float(r5.mean()), "ndcg@5": float(n5.mean()),
                   "validation_users": {"users": int(in_valid.sum()),
                                        "recall@5": float(r5[in_valid].mean())}}
            if d:
                base_r, base_n = hits[excl, 0]
                row["minus_last"] = {"recall@5": [float(r5.mean() - base_r.mean()),
                                                  *bootstrap_ci(r5 - base_r, n_boot=2000)],
                                     "ndcg@5": [float(n5.mean() - base_n.mean()),
                                                *bootstrap_ci(n5 - base_n, n_boot=2000)]}
            rows.append(row)
            diff = row.get("minus_last", {}).get("recall@5")
            print(f"history {'excluded' if excl else 'kept':8}  target i_(n-{d})  users {len(ex)}  "
                  f"R@5 {row['recall@5']:.4f}  N@5 {row['ndcg@5']:.4f}  "
                  f"validation users' R@5 {row['validation_users']['recall@5']:.4f}"
                  + (f"  R@5 - last {diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}]" if diff else ""),
                  flush=True)
    out = write_results(args.json, {"data": str(args.data), "min_length": args.min_length,
                                    "retriever": "bm25", "rows": rows}, before)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
