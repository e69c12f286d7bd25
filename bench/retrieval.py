"""Retrieval speed on full Beauty: LIS (BM25, dense) and the generated-text query path.

Times, for all 22,363 Beauty test users:
  - BM25 LIS end to end (index + search + metrics);
  - dense LIS (item encoding, query encoding, search, metrics, separately);
  - the query path of GLoSS: 5 texts per user (112k queries) -> search -> paper fusion ->
    metrics, for BM25 and dense, with the time split so one sees what bounds it.
The 5 "generated" texts of a user are the texts of its 5 most recent history items (real
title lengths and vocabulary; the metric values of that path are not meaningful).

Peak memory is the process's max RSS after each stage (ru_maxrss, monotone). Prints a table and
writes bench/results/retrieval.json.

    .venv/bin/python bench/retrieval.py [--data ../shared/data/amazon2014/beauty] [--users N]
"""

from __future__ import annotations

import argparse
import sys
import platform
import time
from pathlib import Path

import numpy as np

from glossrec.config import RunConfig
from glossrec.data import load_dataset
from glossrec.evaluate import evaluate
from glossrec.retrieve import build_retriever
from glossrec.retrieve.ranking import fuse_users
from glossrec.splits import make_splits, sample_users

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, peak_rss_mb, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "amazon2014" / "beauty"))
    ap.add_argument("--users", type=int, default=None, help="sample of users (default: all)")
    ap.add_argument("--texts", type=int, default=5)
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--dense-users", type=int, default=None,
                    help="users for the dense query path (default: all; encoding 5 texts per "
                         "user dominates and is linear in users)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "retrieval.json"))
    args = ap.parse_args()
    before = machine()

    cfg = RunConfig()
    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    ex = sample_users(make_splits(ds).test, args.users)
    t_load = time.perf_counter() - t0
    cat = ds.catalog
    item_texts = cat.texts()
    targets = np.array([e.target for e in ex])
    lengths = np.array([e.length for e in ex])
    uids = [e.user_id for e in ex]
    lis_queries = [cat.text(e.history[-1]) for e in ex]
    multi = [[cat.text(i) for i in (list(e.history[-args.texts:]) * args.texts)[:args.texts]] for e in ex]
    flat = [t for ts in multi for t in ts]
    offsets = np.arange(0, len(flat) + 1, args.texts)
    rows: list[dict] = []

    def record(name: str, n_users: int, parts: dict[str, float], metrics: dict | None = None) -> None:
        total = sum(parts.values())
        rows.append({"stage": name, "users": n_users, "total_s": round(total, 3),
                     "users_per_s": round(n_users / total, 1),
                     "split_s": {k: round(v, 3) for k, v in parts.items()},
                     "peak_rss_mb": round(peak_rss_mb(), 1),
                     "recall@5": None if metrics is None else round(metrics["recall@5"], 4),
                     "ndcg@5": None if metrics is None else round(metrics["ndcg@5"], 4)})

    def metrics_of(ranked: np.ndarray, scores: np.ndarray) -> tuple[dict, float]:
        t = time.perf_counter()
        m = evaluate(uids, targets, ranked, scores, lengths, cfg.evaluate, ds.name).metrics["overall"]
        return m, time.perf_counter() - t

    # --- BM25 ---------------------------------------------------------------------------
    bm25_cfg = cfg.retrieve.model_copy(update={"retriever": "bm25"})
    t = time.perf_counter()
    bm25 = build_retriever(bm25_cfg)
    bm25.index(cat.ids, item_texts)
    t_index = time.perf_counter() - t
    t = time.perf_counter()
    ranked, scores = bm25.search(lis_queries, 20)
    t_search = time.perf_counter() - t
    m, t_m = metrics_of(ranked, scores)
    record("LIS bm25", len(ex), {"index": t_index, "search": t_search, "metrics": t_m}, m)

    t = time.perf_counter()
    hi, hs = bm25.search(flat, 1)
    t_search = time.perf_counter() - t
    t = time.perf_counter()
    ranked, scores = fuse_users(hi, hs, offsets, "paper", 20)
    t_fuse = time.perf_counter() - t
    m, t_m = metrics_of(ranked, scores)
    record(f"query path bm25 ({args.texts} texts/user)", len(ex),
           {"search": t_search, "fuse": t_fuse, "metrics": t_m}, m)

    # --- dense --------------------------------------------------------------------------
    if not args.skip_dense:
        dense = build_retriever(cfg.retrieve)
        t = time.perf_counter()
        dense.index(cat.ids, item_texts)
        t_items = time.perf_counter() - t
        t = time.perf_counter()
        q = dense.encode(lis_queries, is_query=True)
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        ranked, scores = dense.search_embeddings(q, 20)
        t_search = time.perf_counter() - t
        m, t_m = metrics_of(ranked, scores)
        record("LIS dense (MiniLM)", len(ex), {"encode items": t_items, "encode queries": t_enc,
                                               "search": t_search, "metrics": t_m}, m)

        nd = min(args.dense_users or len(ex), len(ex))
        sub = flat[: nd * args.texts]
        t = time.perf_counter()
        q = dense.encode(sub, is_query=True)
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        hi, hs = dense.search_embeddings(q, 1)
        t_search = time.perf_counter() - t
        t = time.perf_counter()
        ranked, scores = fuse_users(hi, hs, offsets[: nd + 1], "paper", 20)
        t_fuse = time.perf_counter() - t
        t = time.perf_counter()
        evaluate(uids[:nd], targets[:nd], ranked, scores, lengths[:nd], cfg.evaluate, ds.name)
        t_m = time.perf_counter() - t
        record(f"query path dense ({args.texts} texts/user)", nd,
               {"encode queries": t_enc, "search": t_search, "fuse": t_fuse, "metrics": t_m})

    print(f"\nBeauty: {len(ex)} users, {len(cat)} items, load {t_load:.2f}s; "
          f"{platform.processor() or platform.machine()}")
    print(f"{'stage':34} {'users/s':>9} {'total s':>8} {'peak MB':>8} {'R@5':>7}  split of time (s)")
    for r in rows:
        split = ", ".join(f"{k} {v}" for k, v in r["split_s"].items())
        print(f"{r['stage']:34} {r['users_per_s']:>9} {r['total_s']:>8} {r['peak_rss_mb']:>8} "
              f"{r['recall@5']!s:>7}  {split}")
    out = write_results(Path(args.out), {"dataset": ds.name, "users": len(ex), "items": len(cat),
                                         "rows": rows}, before)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
