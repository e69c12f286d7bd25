"""A million-item catalog on one CPU machine: approximate FAISS indexes against exact search, and
the cost of a live catalog write.

Synthetic catalog: N items (default 1,000,000) of dimension 384 (all-MiniLM-L6-v2's), drawn
around 2,000 cluster centres and L2-normalised, as sentence embeddings of a shop's titles are;
queries are 1,000 items' embeddings with noise. No encoder runs (an item added to the live
catalog gets a synthetic embedding), so the figures are those of the index and the storage.

Per index kind (flat = exact, hnsw, ivf), each in a fresh process so its peak RSS is its own:
build seconds, recall@10 against exact search, query latency (a batch of 1,000 and one at a
time), peak RSS. Then the live catalog (FAISS flat): create, then 200 single-item adds (each
journaled and fsynced before it returns): median / p90 / max latency, one compaction
(a full snapshot), and bytes per item on disk.

Run alone on an idle machine (about 10 minutes at 1M items on 2 cores):
  .venv/bin/python bench/scale.py [--items 1000000]
Writes bench/results/scale.json and a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, peak_rss_mb, print_columns, write_results  # noqa: E402

DIM = 384


def synthetic(n: int, seed: int = 0, centres: int = 2000) -> np.ndarray:
    """float32 [n, DIM] unit vectors around `centres` cluster centres (chunked: bounded memory)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, DIM)).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = c[rng.integers(0, centres, m)] + 0.35 * rng.standard_normal((m, DIM)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def queries(emb: np.ndarray, n: int = 1000, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = emb[rng.choice(len(emb), n, replace=False)] + 0.2 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def retriever(emb: np.ndarray, index_type: str, **params: Any) -> Any:
    """A FaissRetriever over `emb` whose encoder is replaced by synthetic embeddings."""
    from glossrec.retrieve.faiss_index import FaissRetriever

    class Synthetic(FaissRetriever):
        def encode(self, texts, is_query, show_progress=False):  # noqa: ANN001, ANN201
            return synthetic(len(texts), seed=len(self) + 7, centres=50)

    r = Synthetic(encoder="unused", index_type=index_type, **params)
    r._items.reset([f"i{j}" for j in range(len(emb))], [""] * len(emb))
    r._emb = emb
    return r


def index_part(n: int, index_type: str, out: Any) -> None:
    """In a child process: build one index kind, measure it, and put the results on `out`."""
    emb = synthetic(n)
    q = queries(emb)
    exact = np.argsort(-(q @ emb.T), axis=1)[:, :10] if n <= 200_000 else None
    r = retriever(emb, index_type)
    t0 = time.perf_counter()
    r.faiss_index()
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx, _ = r.search_embeddings(q, 10)
    batch_ms = (time.perf_counter() - t0) * 1000 / len(q)
    t0 = time.perf_counter()
    for row in q[:100]:
        r.search_embeddings(row[None], 10)
    single_ms = (time.perf_counter() - t0) * 1000 / 100
    out.put({"index": index_type, "items": n, "build_s": round(build, 1),
             "batch_ms_per_query": round(batch_ms, 3), "single_query_ms": round(single_ms, 2),
             "peak_rss_mb": round(peak_rss_mb()), "top10": idx.tolist(),
             "exact_top10": None if exact is None else exact.tolist()})


def catalog_part(n: int, adds: int, out: Any) -> None:
    """In a child process: a live catalog of n items, then single-item adds."""
    from glossrec.retrieve.live import ItemRecord, LiveCatalog

    emb = synthetic(n)
    r = retriever(emb, "flat")
    folder = Path(tempfile.mkdtemp(prefix="glossrec-scale-"))
    try:
        t0 = time.perf_counter()
        cat = LiveCatalog.create(folder / "index", [ItemRecord(f"i{j}", f"item {j}") for j in range(n)],
                                 r, indexed=True)
        create_s = time.perf_counter() - t0
        snapshot_bytes = sum(p.stat().st_size for p in (folder / "index").rglob("*") if p.is_file())
        r.faiss_index()  # built once; adds go into it
        lat = []
        for j in range(adds):
            t0 = time.perf_counter()
            cat.add([ItemRecord(f"new{j}", f"a new item {j}")])
            lat.append((time.perf_counter() - t0) * 1000)
        hit = r.search_embeddings(r.embeddings[-1:], 1)[0][0, 0]
        t0 = time.perf_counter()
        with cat._lock, cat._file_lock():
            cat.snapshot, cat.seq, cat._offset = cat._write_version(), 0, 0
        compact_s = time.perf_counter() - t0
        out.put({"items": n, "adds": adds, "create_s": round(create_s, 1),
                 "add_ms_median": round(float(np.median(lat)), 2),
                 "add_ms_p90": round(float(np.percentile(lat, 90)), 2),
                 "add_ms_max": round(max(lat), 2), "journal_limit": cat._limit(),
                 "compaction_s": round(compact_s, 1),
                 "bytes_per_item": round(snapshot_bytes / n, 1),
                 "added_item_found": r.ids[hit] == f"new{adds - 1}",
                 "peak_rss_mb": round(peak_rss_mb())})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _child(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    ap.add_argument("--adds", type=int, default=200)
    ap.add_argument("--json", type=Path, default=RESULTS / "scale.json")
    args = ap.parse_args(argv)
    before = machine()
    rows = {k: _child(index_part, args.items, k) for k in args.kinds}
    truth = rows["flat"]["top10"] if "flat" in rows else None
    for r in rows.values():
        ref = r.pop("exact_top10") or truth
        got = r.pop("top10")
        r["recall@10"] = (None if ref is None else
                          round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ref)])), 4))
    live = _child(catalog_part, args.items, args.adds)
    write_results(args.json, {"items": args.items, "dim": DIM, "indexes": list(rows.values()),
                              "live_catalog": live}, before)
    print(f"{args.items:,} synthetic items, dim {DIM}; load average {before['load_avg_1m']} before")
    print_columns(list(rows.values()), [
        ("index", "index", "{}"), ("build s", "build_s", "{}"), ("recall@10", "recall@10", "{}"),
        ("ms/query (batch)", "batch_ms_per_query", "{}"), ("ms (single)", "single_query_ms", "{}"),
        ("peak RSS MB", "peak_rss_mb", "{}")])
    print(json.dumps(live, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
