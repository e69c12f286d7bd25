"""Load test of the HTTP service: throughput and latency, LIS and LM mode, batching on vs off.

Starts ``glossrec serve`` on a free loopback port as a subprocess, drives it with concurrent
httpx async clients for a bounded time and request count, checks every response, and writes
bench/results/serve_load.json.

LM mode uses the embedded SmolLM2-135M WITHOUT fine-tuning (no adapter; ``--mode lm``): the
texts it generates are not good recommendations, but the cost of a request (prompt, beam
search, retrieval, fusion) is the real one, which is what a load test measures.

    .venv/bin/python bench/serve_load.py                    # both modes, defaults below
    .venv/bin/python bench/serve_load.py --modes lis --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, code_version  # noqa: E402


@dataclass
class RunStats:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(1000 * lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))], 1)

        return {"requests_ok": len(lat), "errors": len(self.errors), "error_examples": self.errors[:5],
                "wall_s": round(self.wall_s, 2),
                "requests_per_s": round(len(lat) / self.wall_s, 3) if self.wall_s else None,
                "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                               "mean": round(1000 * sum(lat) / len(lat), 1) if lat else None,
                               "max": round(1000 * lat[-1], 1) if lat else None}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: Path, args: list[str], log: Path, timeout: float = 600,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`glossrec serve` on a free loopback port, its output in `log`; returns once /health
    answers. `env` adds to this process's environment (e.g. the API key)."""
    port = free_port()
    cmd = [sys.executable, "-c", "from glossrec.cli import main; main()", "serve", "--run", str(run),
           "--port", str(port), "--log-level", "warning", *args]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check(body: Any, history: list[str], k: int, known: set[str]) -> str | None:
    """Why a 200 response is wrong, or None."""
    items = body.get("items")
    if not isinstance(items, list) or not isinstance(body.get("queries"), list) or not body["queries"]:
        return "missing items/queries"
    if len(items) > k:
        return f"{len(items)} items for k={k}"
    if [i["rank"] for i in items] != list(range(1, len(items) + 1)):
        return "ranks not 1..n"
    scores = [i["score"] for i in items]
    if any(a < b for a, b in zip(scores, scores[1:])):
        return "scores not descending"
    ids = [i["item_id"] for i in items]
    if len(set(ids)) != len(ids):
        return "duplicate items"
    if set(ids) & set(history):
        return "a history item was recommended (exclude_history is on)"
    if not set(ids) <= known:
        return "an item that is not in the catalog"
    if any(not i["queries"] for i in items):
        return "an item without the query that found it"
    return None


async def drive(url: str, histories: list[list[str]], k: int, concurrency: int, duration_s: float,
                max_requests: int, known: set[str], timeout_s: float = 3600.0) -> RunStats:
    stats = RunStats()
    counter = iter(range(max_requests))
    deadline = time.monotonic() + duration_s

    async def client(c: httpx.AsyncClient) -> None:
        for n in counter:
            if time.monotonic() >= deadline:
                return
            hist = histories[n % len(histories)]
            t0 = time.perf_counter()
            try:
                r = await c.post("/recommend", json={"history": hist, "k": k})
            except httpx.HTTPError as e:
                stats.errors.append(f"{type(e).__name__}: {e}")
                continue
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                stats.errors.append(f"{r.status_code}: {r.text[:200]}")
                continue
            problem = check(r.json(), hist, k, known)
            if problem:
                stats.errors.append(problem)
            else:
                stats.latencies.append(dt)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        stats.wall_s = time.perf_counter() - t0
    return stats


def load_histories(data: Path, n: int, max_len: int, seed: int) -> tuple[list[list[str]], set[str]]:
    from glossrec.data import load_dataset

    ds = load_dataset(data)
    rng = random.Random(seed)
    users = [s for s in ds.sequences if len(s) >= 3]
    picks = rng.sample(users, min(n, len(users)))
    ids = ds.catalog.ids
    return [[ids[i] for i in s[:-1][-max_len:]] for s in picks], set(ids)


def one_run(name: str, run: Path, serve_args: list[str], histories: list[list[str]], known: set[str],
            a: argparse.Namespace, concurrency: int, duration: float, max_requests: int,
            warmup: int, workdir: Path) -> tuple[dict[str, Any], RunStats]:
    load_before = os.getloadavg()[0]
    print(f"[{name}] starting: glossrec serve {' '.join(serve_args)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc, url = start(run, serve_args, workdir / f"{name}.log")
    startup = time.perf_counter() - t0
    try:
        # Warm-up (first-call costs: JIT, caches), not timed.
        asyncio.run(drive(url, histories[-4:], a.k, 1, 900, warmup, known))
        stats = asyncio.run(drive(url, histories, a.k, concurrency, duration, max_requests, known,
                                  a.timeout))
        health = httpx.get(url + "/health", timeout=30).json()
    finally:
        stop(proc)
    out = {"serve_args": serve_args, "concurrency": concurrency, "startup_s": round(startup, 1),
           "loadavg_1m_before": round(load_before, 2),
           **stats.summary(), "server_batching": health["batching"],
           "server_generate_calls": health["generate_calls"]}
    print(f"[{name}] {out['requests_ok']} ok / {out['errors']} errors in {out['wall_s']} s: "
          f"{out['requests_per_s']} req/s, p50 {out['latency_ms']['p50']} ms, "
          f"p95 {out['latency_ms']['p95']} ms, p99 {out['latency_ms']['p99']} ms; "
          f"mean batch {health['batching']['mean_size']}", file=sys.stderr, flush=True)
    return out, stats


def merge(stats: list[RunStats]) -> RunStats:
    return RunStats([x for s in stats for x in s.latencies], [x for s in stats for x in s.errors],
                    sum(s.wall_s for s in stats))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "beauty-sample")
    p.add_argument("--modes", default="lis,lm", help="comma list of lis, lm")
    p.add_argument("--retriever", default="bm25", choices=["bm25", "dense"])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--users", type=int, default=400, help="distinct histories to cycle through")
    p.add_argument("--max-history", type=int, default=20, help="keep each history's newest N items")
    p.add_argument("--warmup", type=int, default=4, help="untimed requests first (LIS)")
    p.add_argument("--lm-warmup", type=int, default=1, help="untimed requests first (LM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="client timeout per request (queued unbatched LM requests wait long on CPU)")
    p.add_argument("--lis-concurrency", type=int, default=16)
    p.add_argument("--lis-duration", type=float, default=20.0)
    p.add_argument("--lis-requests", type=int, default=5000)
    p.add_argument("--lm-concurrency", type=int, default=8)
    p.add_argument("--lm-duration", type=float, default=480.0)
    p.add_argument("--lm-requests", type=int, default=8,
                   help="per LM run; small because CPU beam search takes tens of seconds a prompt")
    p.add_argument("--lm-max-history", type=int, default=5,
                   help="newest N items in LM prompts (prompt length drives CPU prefill cost)")
    p.add_argument("--lm-max-batch", type=int, default=8)
    p.add_argument("--lm-rounds", type=int, default=2,
                   help="batched/unbatched pairs, alternating which goes first")
    p.add_argument("--lm-window-ms", type=float, default=15.0)
    p.add_argument("--num-beams", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--stop-at-newline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    a = p.parse_args()

    from glossrec.config import config_to_toml, load_config
    from glossrec.serve import make_index_run

    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    histories, known = load_histories(a.data, a.users, a.max_history, a.seed)
    results: dict[str, Any] = {}
    code_at_start = code_version()
    with tempfile.TemporaryDirectory(prefix="glossrec-load-") as tmp:
        workdir = Path(tmp)
        run = make_index_run(a.data, a.retriever, workdir / "run")
        if "lis" in modes:
            results["lis"] = one_run("lis", run, ["--mode", "lis"], histories, known, a,
                                     a.lis_concurrency, a.lis_duration, a.lis_requests, a.warmup,
                                     workdir)[0]
        if "lm" in modes:
            cfg = load_config(run / "config.toml", {"generate": {
                "num_beams": a.num_beams, "num_return": a.num_beams, "max_new_tokens": a.max_new_tokens,
                "stop_at_newline": a.stop_at_newline, "batch_size": a.lm_max_batch}})
            (run / "config.toml").write_text(config_to_toml(cfg), encoding="utf-8")
            lm_hist = [h[-a.lm_max_history:] for h in histories]
            base = ["--mode", "lm"]
            arms = {"lm_batched": ["--max-batch", str(a.lm_max_batch),
                                   "--batch-window-ms", str(a.lm_window_ms)],
                    "lm_unbatched": ["--max-batch", "1"]}
            # The machine's load drifts: alternate which arm goes first, round by round.
            rounds: list[dict[str, Any]] = []
            raw: dict[str, list[RunStats]] = {name: [] for name in arms}
            for r in range(a.lm_rounds):
                names = list(arms) if r % 2 == 0 else list(arms)[::-1]
                this: dict[str, Any] = {}
                for name in names:
                    this[name], st = one_run(f"{name}#{r}", run, base + arms[name], lm_hist, known, a,
                                             a.lm_concurrency, a.lm_duration, a.lm_requests,
                                             a.lm_warmup, workdir)
                    raw[name].append(st)
                rounds.append(this)
            results["lm_rounds"] = rounds
            for name in arms:
                results[name] = {"serve_args": base + arms[name], "concurrency": a.lm_concurrency,
                                 "rounds": a.lm_rounds, **merge(raw[name]).summary()}
    if "lm_batched" in results and "lm_unbatched" in results:
        b, u = results["lm_batched"]["requests_per_s"], results["lm_unbatched"]["requests_per_s"]
        results["lm_batching_throughput_gain"] = round(b / u, 2) if b and u else None
    report = {
        "what": "glossrec serve load test (bench/serve_load.py)",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_at_end": os.getloadavg(), "python": platform.python_version()},
        "code_at_start": code_at_start, "code_at_end": code_version(),
        "data": str(a.data), "retriever": a.retriever, "k": a.k, "distinct_histories": len(histories),
        "lm_model": "embedded:smollm2 (SmolLM2-135M-Instruct), NOT fine-tuned, no adapter",
        "lm_generation": {"num_beams": a.num_beams, "num_return": a.num_beams,
                          "history_items": a.lm_max_history,
                          "max_new_tokens": a.max_new_tokens, "stop_at_newline": a.stop_at_newline},
        "results": results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    from glossrec.io import write_json

    write_json(a.out, report)
    print(json.dumps(results, indent=1))
    print(f"wrote {a.out}", file=sys.stderr)
    if any(r.get("errors") for r in results.values() if isinstance(r, dict) and "errors" in r):
        sys.exit(1)


if __name__ == "__main__":
    main()
