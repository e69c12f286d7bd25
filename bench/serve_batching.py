"""Do LM requests under steady load form full batches? The batch window against the spread of
arrivals, with no model download.

``glossrec serve`` in LM mode with the tests' tiny random Llama (tests/conftest.py builds it)
under the shipped model's generation recipe (catalog-grounded, PMI-guided search, batches of
8), over the tests' 12-item catalog. ``--clients`` closed-loop clients (each sends its next
request when its answer arrives) send ``--requests`` in all, per window arm (``default``: the
server's own window; a number: ``--batch-window-ms``). Recorded per arm: the batch sizes the
server formed (/health), throughput, latency and the server's CPU time. The model is tiny, but
a batch still takes about a second on CPU (the search loop's Python), which is what sets the
default window; a real model's batch costs more and is waited for longer.

    .venv/bin/python bench/serve_batching.py                # bench/results/serve_batching.json
    .venv/bin/python bench/serve_batching.py --windows default,15,100
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine, write_results
from serve_load import batch_delta, cpu_seconds, drive, start, stop

HISTORIES = [["A1", "A2"], ["A4"], ["A5", "A6"], ["B1"], ["B2", "A7"], ["A8"], ["A9", "A3"], ["B3"]]


def make_run(folder: Path) -> tuple[Path, set[str]]:
    """A servable run: the tiny LM, the tests' catalog, the shipped recipe's [generate]."""
    sys.path.insert(0, str(ROOT))
    from glossrec.config import load_config
    from glossrec.rundir import RunDir
    from tests.conftest import build_tiny_lm, write_tiny_dataset
    from tests.serve.conftest import SEQUENCES, TITLES

    model = build_tiny_lm(folder / "model")
    cfg = load_config(None, {
        "data": {"path": str(write_tiny_dataset(folder / "data", TITLES, SEQUENCES))},
        "model": {"name": str(model), "load_in_4bit": False},
        "generate": {"num_beams": 3, "num_return": 3, "max_new_tokens": 6, "batch_size": 8,
                     "constrain": "catalog", "prior_weight": 1.0, "grounded_search": "glossrec"},
        "retrieve": {"retriever": "bm25"}})
    RunDir(folder / "run").write_config(cfg)
    return folder / "run", set(TITLES)


def one_arm(run: Path, window: str, known: set[str], a: argparse.Namespace, log: Path) -> dict[str, Any]:
    args = ["--mode", "lm"] + ([] if window == "default" else ["--batch-window-ms", window])
    proc, url = start(run, args, log)
    try:
        asyncio.run(drive(url, HISTORIES[:1], 3, 1, 600, 1, known))  # untimed first call
        before = httpx.get(url + "/health", timeout=60).json()["batching"]
        cpu0 = cpu_seconds(proc.pid)
        stats = asyncio.run(drive(url, HISTORIES, 3, a.clients, 600, a.requests, known))
        cpu = cpu_seconds(proc.pid) - cpu0
        after = httpx.get(url + "/health", timeout=60).json()["batching"]
    finally:
        stop(proc)
    return {"serve_args": args, "clients": a.clients, **stats.summary(),
            "server_cpu_s": round(cpu, 1), "batches": batch_delta(before, after)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", default="default,15", help="comma list: default, or ms")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=48, help="per arm, all clients together")
    p.add_argument("--out", type=Path, default=RESULTS / "serve_batching.json")
    a = p.parse_args()
    before = machine()
    arms: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="glossrec-batching-") as tmp:
        run, known = make_run(Path(tmp))
        for window in [w.strip() for w in a.windows.split(",") if w.strip()]:
            t0 = time.perf_counter()
            arm = one_arm(run, window, known, a, Path(tmp) / f"{window}.log")
            arms[f"window_{window}"] = arm
            b = arm["batches"]
            print(f"window {window}: batches {b['sizes']} (mean {b['mean_size']}), "
                  f"{arm['requests_per_s']} req/s, p50 {arm['latency_ms']['p50']} ms, "
                  f"p95 {arm['latency_ms']['p95']} ms, server CPU {arm['server_cpu_s']} s, "
                  f"{arm['errors']} errors ({time.perf_counter() - t0:.0f} s)", flush=True)
    write_results(a.out, {"command": " ".join(["bench/serve_batching.py", *sys.argv[1:]]),
                          "model": "tests' tiny random Llama (hidden 64, 2 layers)",
                          "catalog_items": len(known), "arms": arms}, before)
    print(f"wrote {a.out}", file=sys.stderr)
    if any(arm["errors"] for arm in arms.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
