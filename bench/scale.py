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

BM25 (``bm25_live``): a live catalog of N synthetic Zipf-worded titles; per add: the steady
search before it, the journaled add, the first search after it; then 20 removals and one
compaction (the main segment rebuilt over the live catalog).

Run alone on an idle machine (about 10 minutes at 1M items on 2 cores, plus the BM25 arm):
  .venv/bin/python bench/scale.py [--items 1000000]
Small, BM25 only: .venv/bin/python bench/scale.py --items 20000 --kinds --no-live-faiss --adds 30
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
    from glossrec.serve.store import ItemRecord, LiveCatalog

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


def synthetic_titles(n: int, seed: int = 0, vocab: int = 50_000) -> list[str]:
    """n shop-like titles: "Title: " + 4-14 words drawn Zipf-like from `vocab` words."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{j}" for j in range(vocab)])
    ranks = np.minimum(rng.zipf(1.3, size=n * 14), vocab) - 1
    lens = rng.integers(4, 15, size=n)
    out, at = [], 0
    for ln in lens.tolist():
        out.append("Title: " + " ".join(words[ranks[at:at + ln]].tolist()))
        at += ln
    return out


def bm25_part(n: int, adds: int, out: Any) -> None:
    """In a child process: a live BM25 catalog of n synthetic titles (journaled writes, as the
    service makes them): add latency, the first search after an add, steady search, removal,
    compaction, peak RSS."""
    from glossrec.retrieve.bm25 import BM25Retriever
    from glossrec.serve.store import ItemRecord, LiveCatalog

    titles = synthetic_titles(n)
    queries = [[t] for t in synthetic_titles(adds, seed=1)]
    folder = Path(tempfile.mkdtemp(prefix="glossrec-scale-bm25-"))
    try:
        r = BM25Retriever()
        t0 = time.perf_counter()
        cat = LiveCatalog.create(folder / "index", [ItemRecord(f"i{j}", t[7:]) for j, t in enumerate(titles)], r)
        create_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        r.search(queries[0], 10)  # builds the main segment
        build_s = time.perf_counter() - t0
        steady, add, after, remove = [], [], [], []
        for j in range(adds):
            t0 = time.perf_counter()
            r.search(queries[j], 10)
            steady.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cat.add([ItemRecord(f"new{j}", f"fresh item {j} w1 w2")])
            add.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r.search(queries[j], 10)
            after.append(time.perf_counter() - t0)
        for j in range(min(adds, 20)):
            t0 = time.perf_counter()
            cat.remove([f"i{j}"])
            remove.append(time.perf_counter() - t0)
        found = r.ids[r.search([f"fresh item {adds - 1}"], 1)[0][0, 0]] == f"new{adds - 1}"
        pending = r.pending
        t0 = time.perf_counter()
        r.compact()
        compact_s = time.perf_counter() - t0

        def ms(xs: list[float], q: float) -> float:
            return round(float(np.percentile(xs, q)) * 1000, 2)

        out.put({"items": n, "adds": adds, "create_s": round(create_s, 1),
                 "first_build_s": round(build_s, 1),
                 "add_ms_median": ms(add, 50), "add_ms_p95": ms(add, 95), "add_ms_max": ms(add, 100),
                 "search_after_add_ms_median": ms(after, 50), "search_after_add_ms_p95": ms(after, 95),
                 "steady_search_ms_median": ms(steady, 50), "steady_search_ms_p95": ms(steady, 95),
                 "remove_ms_median": ms(remove, 50), "pending_before_compaction": pending,
                 "compaction_s": round(compact_s, 1), "added_item_found": bool(found),
                 "journal_limit": cat._limit(), "peak_rss_mb": round(peak_rss_mb())})
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
    ap.add_argument("--kinds", nargs="*", default=["flat", "ivf", "hnsw"],
                    help="FAISS index kinds to measure (none: --kinds with no value)")
    ap.add_argument("--no-live-faiss", action="store_true", help="skip the FAISS live-catalog arm")
    ap.add_argument("--no-bm25", action="store_true", help="skip the BM25 live-catalog arm")
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
    live = None if args.no_live_faiss else _child(catalog_part, args.items, args.adds)
    bm25 = None if args.no_bm25 else _child(bm25_part, args.items, args.adds)
    write_results(args.json, {"items": args.items, "dim": DIM, "indexes": list(rows.values()),
                              "live_catalog": live, "bm25_live": bm25}, before)
    print(f"{args.items:,} synthetic items, dim {DIM}; load average {before['load_avg_1m']} before")
    print_columns(list(rows.values()), [
        ("index", "index", "{}"), ("build s", "build_s", "{}"), ("recall@10", "recall@10", "{}"),
        ("ms/query (batch)", "batch_ms_per_query", "{}"), ("ms (single)", "single_query_ms", "{}"),
        ("peak RSS MB", "peak_rss_mb", "{}")])
    print(json.dumps({"live_catalog": live, "bm25_live": bm25}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
