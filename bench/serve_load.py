"""Load test of the HTTP service: throughput and latency, LIS and LM mode, batching on vs off.

Starts ``glossrec serve`` on a free loopback port as a subprocess, drives it with concurrent
httpx async clients for a bounded time and request count, checks every response, and writes
bench/results/serve_load.json.

Mode ``lm`` uses the embedded SmolLM2-135M WITHOUT fine-tuning (no adapter; ``--mode lm``):
the texts it generates are not good recommendations, but the cost of a request (prompt, beam
search, retrieval, fusion) is the real one, which is what a load test measures.

Mode ``lm-model`` serves a trained model (``--lm-model``, the shipped ``smollm2-beauty`` by
default) from a run made as ``glossrec index --model NAME`` makes it, so with the model's own
recipe (for the shipped one: catalog-grounded, PMI-guided search). Histories are exactly
``--lm-max-history`` items of real users. For each ``--lm-windows`` arm (``default``: the
server's own batch window; a number: ``--batch-window-ms``) one server answers 1 client, then
8 (``--lm-clients``), each a fixed number of requests (``--lm-model-requests``); per phase it
records latency, throughput, the server's CPU time and the batch sizes it formed (/health).

    .venv/bin/python bench/serve_load.py                    # lis and lm, defaults below
    .venv/bin/python bench/serve_load.py --modes lis --duration 20
    .venv/bin/python bench/serve_load.py --modes lm-model --data ../shared/data/amazon2014/beauty \
        --out bench/results/serve_load--lm-shipped.json     # the shipped model, 1 and 8 clients
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
from _common import ROOT, code_version, machine  # noqa: E402


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


def load_histories(data: Path, n: int, max_len: int, seed: int,
                   min_len: int = 2) -> tuple[list[list[str]], set[str]]:
    """n random users' histories (all but their last item), the newest max_len items of each;
    only users with at least min_len history items; and every catalog id."""
    from glossrec.data import load_dataset

    ds = load_dataset(data)
    rng = random.Random(seed)
    users = [s for s in ds.sequences if len(s) - 1 >= max(min_len, 2)]
    picks = rng.sample(users, min(n, len(users)))
    ids = ds.catalog.ids
    return [[ids[i] for i in s[:-1][-max_len:]] for s in picks], set(ids)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The batches a phase formed: the difference of two /health "batching" readings."""
    sizes = {k: v - before["sizes"].get(k, 0) for k, v in after["sizes"].items()}
    sizes = {k: v for k, v in sorted(sizes.items(), key=lambda kv: int(kv[0])) if v}
    batches, requests = after["batches"] - before["batches"], after["requests"] - before["requests"]
    return {"batches": batches, "requests": requests, "sizes": sizes,
            "mean_size": round(requests / batches, 2) if batches else None,
            "busy_s": round(after["busy_s"] - before["busy_s"], 2),
            "window_ms_at_end": after["window_ms"]}


def lm_model_study(a: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The trained model served as a user would serve it: 1 client, then 8, per window arm."""
    from glossrec.config import load_config
    from glossrec.serve import make_index_run

    t0 = time.perf_counter()
    run = make_index_run(a.data, a.retriever, workdir / "lm-model-run", weights=a.lm_model)
    index_s = time.perf_counter() - t0
    gen = load_config(run / "config.toml").generate
    n = a.lm_max_history
    histories, known = load_histories(a.data, a.users, n, a.seed, min_len=n)
    clients = [int(c) for c in a.lm_clients.split(",")]
    counts = [int(c) for c in a.lm_model_requests.split(",")]
    if len(counts) != len(clients):
        raise SystemExit("--lm-model-requests needs one count per --lm-clients entry")
    arms: dict[str, Any] = {}
    for window in [w.strip() for w in a.lm_windows.split(",") if w.strip()]:
        args = ["--mode", "lm"] + ([] if window == "default" else ["--batch-window-ms", window])
        name = f"window_{window}"
        print(f"[{name}] starting: glossrec serve {' '.join(args)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc, url = start(run, args, workdir / f"{name}.log")
        arm: dict[str, Any] = {"serve_args": args, "startup_s": round(time.perf_counter() - t0, 1),
                               "phases": []}
        try:
            # Untimed: first-call costs (the prior's cache, allocator); also the window's first
            # measure of a batch's time.
            asyncio.run(drive(url, histories[-1:], a.k, 1, 900, a.lm_warmup, known, a.timeout))
            for conc, count in zip(clients, counts):
                before = httpx.get(url + "/health", timeout=60).json()
                load0, cpu0 = os.getloadavg()[0], cpu_seconds(proc.pid)
                stats = asyncio.run(drive(url, histories, a.k, conc, a.lm_duration, count, known,
                                          a.timeout))
                cpu = cpu_seconds(proc.pid) - cpu0
                after = httpx.get(url + "/health", timeout=60).json()
                phase = {"clients": conc, "requests": count, **stats.summary(),
                         "server_cpu_s": round(cpu, 1),
                         "server_cpu_s_per_request": round(cpu / count, 2) if count else None,
                         "loadavg_1m_before": round(load0, 2),
                         "loadavg_1m_after": round(os.getloadavg()[0], 2),
                         "batches": batch_delta(before["batching"], after["batching"]),
                         "generate_calls": after["generate_calls"] - before["generate_calls"]}
                arm["phases"].append(phase)
                print(f"[{name}] {conc} client(s): {phase['requests_ok']} ok / {phase['errors']} "
                      f"errors, {phase['requests_per_s']} req/s, p50 {phase['latency_ms']['p50']} "
                      f"ms, p95 {phase['latency_ms']['p95']} ms; batches {phase['batches']['sizes']}",
                      file=sys.stderr, flush=True)
        finally:
            stop(proc)
        arms[name] = arm
    return {"model": a.lm_model, "run": f"glossrec index --model {a.lm_model} --retriever {a.retriever}",
            "index_s": round(index_s, 1), "history_items": n, "distinct_histories": len(histories),
            "catalog_items": len(known),
            "generate": {k: getattr(gen, k) for k in (
                "constrain", "prior_weight", "grounded_search", "grounded_score", "num_beams",
                "num_return", "max_new_tokens", "batch_size")},
            "arms": arms}


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
    p.add_argument("--modes", default="lis,lm", help="comma list of lis, lm, lm-model")
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
    p.add_argument("--lm-model", default="smollm2-beauty",
                   help="lm-model: a shipped model's name or a weights folder (glossrec index --model)")
    p.add_argument("--lm-clients", default="1,8", help="lm-model: concurrent clients per phase")
    p.add_argument("--lm-model-requests", default="6,24",
                   help="lm-model: requests per phase, one count per --lm-clients entry")
    p.add_argument("--lm-windows", default="default",
                   help="lm-model: batch window arms, 'default' (the server's) or ms, e.g. default,15")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    a = p.parse_args()

    from glossrec.config import config_to_toml, load_config
    from glossrec.serve import make_index_run

    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    unknown = set(modes) - {"lis", "lm", "lm-model"}
    if unknown:
        raise SystemExit(f"--modes: unknown {sorted(unknown)} (lis, lm, lm-model)")
    histories, known = load_histories(a.data, a.users, a.max_history, a.seed)
    results: dict[str, Any] = {}
    code_at_start = code_version()
    machine_at_start = machine()
    with tempfile.TemporaryDirectory(prefix="glossrec-load-") as tmp:
        workdir = Path(tmp)
        if "lm-model" in modes:
            results["lm_model"] = lm_model_study(a, workdir)
        # lis and lm share one LIS-made run (lm rewrites its [generate]).
        run = make_index_run(a.data, a.retriever, workdir / "run") if {"lis", "lm"} & set(modes) else None
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
    report: dict[str, Any] = {
        "what": "glossrec serve load test (bench/serve_load.py)",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "cpu": machine_at_start["cpu"],
                    "loadavg_1m_at_start": machine_at_start["load_avg_1m"],
                    "loadavg_at_end": os.getloadavg(), "python": platform.python_version()},
        "code_at_start": code_at_start, "code_at_end": code_version(),
        "data": str(a.data), "retriever": a.retriever, "k": a.k, "distinct_histories": len(histories),
        "results": results,
    }
    if "lm" in modes:
        report["lm_model"] = "embedded:smollm2 (SmolLM2-135M-Instruct), NOT fine-tuned, no adapter"
        report["lm_generation"] = {"num_beams": a.num_beams, "num_return": a.num_beams,
                                   "history_items": a.lm_max_history,
                                   "max_new_tokens": a.max_new_tokens,
                                   "stop_at_newline": a.stop_at_newline}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    from glossrec.io import write_json

    write_json(a.out, report)
    print(json.dumps(results, indent=1))
    print(f"wrote {a.out}", file=sys.stderr)
    phases = [ph for arm in results.get("lm_model", {}).get("arms", {}).values() for ph in arm["phases"]]
    if any(r.get("errors") for r in [*results.values(), *phases] if isinstance(r, dict) and "errors" in r):
        sys.exit(1)


if __name__ == "__main__":
    main()
