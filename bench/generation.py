"""Generation throughput on CPU: embedded SmolLM2-135M, real Beauty test prompts, paper beams.

Each configuration runs in its own subprocess (clean peak-RSS numbers, no warm caches shared):

- ``naive``: plain ``model.generate`` one prompt at a time (the reference code's loop at
  batch 1, every prompt encoded once per beam);
- ``bsN``: glossrec's HFGenerator, N prompts per batch (length-sorted), prompt encoded once and
  its KV cache shared by the 5 beams;
- ``bf16``: the default batch with bf16 autocast (an option: it may change texts);
- ``newline``: the default batch with ``stop_at_newline`` (an option: beams end at their first
  newline, which changes their scores, so texts may differ).

Texts of every configuration are compared with ``naive`` (post-processed texts, and the raw
50-token continuations). Next to each throughput is a FLOP bound: 2 x parameters x tokens the
model processes per user (prefill positions skip the LM head), divided by this machine's
measured fp32 (or bf16) matmul rate. Attention FLOPs are left out (under 10% at these lengths).

Run from the repo root:  .venv/bin/python bench/generation.py [--users 16] [--threads 1]
Writes bench/results/generation.json and prints a table. Exits 1 if the default configuration
is not >= 2x faster than naive with identical fp32 texts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, matmul_flops, print_columns, reset_peak_rss, rss_mb  # noqa: E402


@dataclass
class RunSpec:
    name: str
    batch_size: int
    share_prefill: bool = True
    bf16: bool = False
    stop_at_newline: bool = False
    users: int | None = None
    """Run on the first N prompts only (bf16 autocast is very slow on CPUs without bf16 units)."""


@dataclass
class RunResult:
    spec: dict[str, Any]
    users: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    model_rss_mb: float
    prompt_tokens: int
    processed_prefill_tokens: int
    processed_decode_tokens: int
    steps: list[int] = field(default_factory=list)
    texts: list[list[str]] = field(default_factory=list)
    raw: list[list[str]] = field(default_factory=list)
    params: int = 0
    embedding_params: int = 0


# --- worker: one configuration ---------------------------------------------------------------


def worker(spec_path: Path, out_path: Path) -> None:
    job = json.loads(spec_path.read_text())
    import torch

    torch.set_num_threads(job["threads"])
    from glossrec.config import GenerateConfig, ModelConfig
    from glossrec.generate.hf import HFGenerator
    from glossrec.models import load_model

    spec = RunSpec(**job["spec"])
    prompts: list[str] = job["prompts"][:spec.users]
    model, tok = load_model(ModelConfig())
    model_rss = rss_mb("VmRSS")
    cfg = GenerateConfig(batch_size=spec.batch_size, bf16=spec.bf16,
                         stop_at_newline=spec.stop_at_newline,
                         max_new_tokens=job["max_new_tokens"])
    gen = HFGenerator(model, tok, cfg, share_prefill=spec.share_prefill)
    # Warm-up (one-time costs: kernels, allocator), not timed.
    HFGenerator(model, tok, cfg.model_copy(update={"max_new_tokens": 2}),
                share_prefill=spec.share_prefill).generate(prompts[:1])

    shapes: list[tuple[int, int, int]] = []
    raw: list[str] = []
    real_generate, real_decode = model.generate, tok.batch_decode

    def generate(*args: Any, **kw: Any) -> Any:
        out = real_generate(*args, **kw)
        ids = kw["input_ids"]
        shapes.append((ids.shape[0], ids.shape[1], out.shape[1] - ids.shape[1]))
        return out

    def batch_decode(seqs: Any, **kw: Any) -> Any:
        texts = real_decode(seqs, **kw)
        raw.extend(texts)
        return texts

    model.generate = generate  # type: ignore[method-assign]
    tok.batch_decode = batch_decode  # type: ignore[method-assign]

    if spec.share_prefill:
        texts = _timed(gen, prompts)
    else:
        # The naive loop: one prompt at a time, in input order, plain generate.
        texts = _timed(gen, prompts, one_by_one=True)
    wall, cpu, out_texts, order = texts
    beams = cfg.num_beams
    prefill = decode = 0
    for rows, width, steps in shapes:
        if spec.share_prefill and width > 1:
            prefill += rows * (width - 1) + rows * beams        # prompt once + last token per beam
        else:
            prefill += rows * beams * width                     # prompt copied to every beam
        decode += rows * beams * max(steps - 1, 0)
    # raw[] is in batch order; map back to input order through `order`.
    k = cfg.num_return
    raw_by_input: list[list[str]] = [[] for _ in prompts]
    for pos, i in enumerate(order):
        raw_by_input[i] = raw[pos * k:(pos + 1) * k]
    emb = model.get_input_embeddings().weight.numel()
    result = RunResult(
        spec=asdict(spec), users=len(prompts), wall_s=wall, cpu_s=cpu,
        peak_rss_mb=rss_mb("VmHWM"), model_rss_mb=model_rss,
        prompt_tokens=sum(len(ids) for ids in gen.encode(prompts)),
        processed_prefill_tokens=prefill, processed_decode_tokens=decode,
        steps=[s for _, _, s in shapes], texts=out_texts, raw=raw_by_input,
        params=sum(p.numel() for p in model.parameters()), embedding_params=emb)
    out_path.write_text(json.dumps(asdict(result)))


def _timed(gen: Any, prompts: list[str], one_by_one: bool = False
           ) -> tuple[float, float, list[list[str]], list[int]]:
    """(wall s, CPU s, texts in input order, the order prompts were generated in)."""
    reset_peak_rss()
    if one_by_one:
        order = list(range(len(prompts)))
        t0, c0 = time.perf_counter(), time.process_time()
        texts = [gen.generate([p])[0] for p in prompts]
    else:
        enc = gen.encode(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))  # HFGenerator's order
        t0, c0 = time.perf_counter(), time.process_time()
        texts = gen.generate(prompts)
    return time.perf_counter() - t0, time.process_time() - c0, texts, order


# --- driver ----------------------------------------------------------------------------------


def build_prompts(data: Path, users: int, seed: int) -> list[tuple[str, str]]:
    from glossrec.config import ModelConfig, PromptConfig
    from glossrec.data import load_dataset
    from glossrec.models import load_tokenizer
    from glossrec.prompts import test_prompts
    from glossrec.splits import make_splits, sample_users

    ds = load_dataset(data)
    examples = sample_users(make_splits(ds).test, users, seed)
    return test_prompts(examples, ds.catalog, load_tokenizer(ModelConfig()), PromptConfig(), 50)


def run_config(spec: RunSpec, prompts: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    spec_path, out_path = tmp / f"{spec.name}.spec.json", tmp / f"{spec.name}.out.json"
    spec_path.write_text(json.dumps({"spec": asdict(spec), "prompts": prompts,
                                     "threads": args.threads,
                                     "max_new_tokens": args.max_new_tokens}))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                           str(spec_path), str(out_path)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"configuration {spec.name} failed (exit {proc.returncode})")
    res = json.loads(out_path.read_text())
    print(f"  {spec.name}: {res['wall_s']:.1f}s generation, {time.perf_counter() - t0:.0f}s in all",
          file=sys.stderr, flush=True)
    return res


def summarize(results: dict[str, dict[str, Any]], flops: dict[str, float], load: list[float],
              args: argparse.Namespace) -> dict[str, Any]:
    """Table rows and checks from the per-configuration results (kept under "runs")."""
    base = results["naive"]
    rows = []
    for name, r in results.items():
        n = r["users"]
        p, e = r["params"], r["embedding_params"]
        flop = 2 * (p - e) * r["processed_prefill_tokens"] + 2 * p * r["processed_decode_tokens"]
        rate = flops["bfloat16" if r["spec"]["bf16"] else "float32"]
        bound_s = flop / rate
        same_texts = sum(a == b for a, b in zip(r["texts"], base["texts"])) / n
        same_raw = sum(a == b for a, b in zip(r["raw"], base["raw"])) / n
        rows.append({
            "name": name, **r["spec"],
            "users_per_s": n / r["wall_s"], "s_per_user": r["wall_s"] / n,
            "cpu_s_per_user": r["cpu_s"] / n,
            "users": n,
            "speedup_vs_naive": (base["wall_s"] / base["users"]) / (r["wall_s"] / n),
            "cpu_speedup_vs_naive": (base["cpu_s"] / base["users"]) / (r["cpu_s"] / n),
            "tokens_per_user": (r["processed_prefill_tokens"] + r["processed_decode_tokens"]) / n,
            "gflop_per_user": flop / n / 1e9,
            "flop_bound_users_per_s": n / bound_s,
            "efficiency": bound_s / r["wall_s"],
            "peak_rss_mb": r["peak_rss_mb"], "rss_over_model_mb": r["peak_rss_mb"] - r["model_rss_mb"],
            "mean_steps": sum(r["steps"]) / max(len(r["steps"]), 1),
            "identical_texts_vs_naive": same_texts, "identical_raw_vs_naive": same_raw,
        })
    from glossrec.config import GenerateConfig

    default = f"bs{GenerateConfig().batch_size}"
    d = next(row for row in rows if row["name"] == default)
    checks = {
        "default_config": default,
        "default_speedup_vs_naive": d["speedup_vs_naive"],
        "default_cpu_speedup_vs_naive": d["cpu_speedup_vs_naive"],
        "default_identical_texts": d["identical_texts_vs_naive"],
        "default_identical_raw": d["identical_raw_vs_naive"],
        "passed": d["speedup_vs_naive"] >= 2.0 and d["identical_texts_vs_naive"] == 1.0,
    }
    return {
        "what": "HF beam search (5 beams, 5 returned, <= 50 new tokens), embedded SmolLM2-135M "
                "(untrained), real Beauty test prompts, CPU",
        "users": base["users"], "seed": args.seed, "threads": args.threads,
        "max_new_tokens": args.max_new_tokens,
        "mean_prompt_tokens": base["prompt_tokens"] / base["users"],
        "params": base["params"], "embedding_params": base["embedding_params"],
        "matmul_gflops": {k: v / 1e9 for k, v in flops.items()},
        "load_average_before_after": load, "cpus": os.cpu_count(),
        "rows": rows, "checks": checks,
        "runs": {name: {k: v for k, v in r.items()} for name, r in results.items()},
        "examples": {name: {"texts_user0": r["texts"][0], "raw_user0": r["raw"][0]}
                     for name, r in results.items() if name in ("naive", "newline")},
    }


def print_table(summary: dict[str, Any]) -> None:
    cols = [("config", "name", "{}"), ("batch", "batch_size", "{}"), ("users", "users", "{}"),
            ("users/s", "users_per_s", "{:.3f}"),
            ("s/user", "s_per_user", "{:.2f}"), ("cpu s/user", "cpu_s_per_user", "{:.2f}"),
            ("speedup", "speedup_vs_naive", "{:.2f}x"), ("bound users/s", "flop_bound_users_per_s", "{:.3f}"),
            ("eff.", "efficiency", "{:.0%}"), ("GFLOP/user", "gflop_per_user", "{:.0f}"),
            ("peak RSS MB", "peak_rss_mb", "{:.0f}"), ("+model MB", "rss_over_model_mb", "{:.0f}"),
            ("same texts", "identical_texts_vs_naive", "{:.0%}"), ("same raw", "identical_raw_vs_naive", "{:.0%}")]
    print_columns(summary["rows"], cols)
    m = summary["matmul_gflops"]
    c = summary["checks"]
    print(f"\n{summary['users']} users, mean prompt {summary['mean_prompt_tokens']:.0f} tokens, "
          f"{summary['threads']} thread(s); linear 256x576x1536: fp32 {m['float32']:.1f} GFLOP/s, "
          f"bf16 autocast {m['bfloat16']:.1f} GFLOP/s; load average (1 min) before/after "
          f"{summary['load_average_before_after']} on {summary['cpus']} CPUs")
    print(f"default ({c['default_config']}): {c['default_speedup_vs_naive']:.2f}x faster than naive "
          f"(CPU time {c['default_cpu_speedup_vs_naive']:.2f}x), identical texts "
          f"{c['default_identical_texts']:.0%}, identical raw continuations {c['default_identical_raw']:.0%}"
          f" -> {'PASS' if c['passed'] else 'FAIL'}")
    print("(same texts: the 5 post-processed texts of a user equal naive's; same raw: the full "
          "decoded continuations, the stricter check)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/amazon2014/beauty")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: this 2-core machine is shared; 2 threads thrash)")
    ap.add_argument("--batch-sizes", default="1,4,8,16")
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--no-options", action="store_true", help="skip the bf16 and newline runs")
    ap.add_argument("--bf16-users", type=int, default=4,
                    help="the bf16 run uses the first N users only (slow without CPU bf16 units)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/generation.json")
    ap.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0

    from glossrec.config import GenerateConfig
    from glossrec.io import write_json

    load = [round(os.getloadavg()[0], 2)]
    items = build_prompts(args.data, args.users, args.seed)
    prompts = [p for _, p in items]
    flops = {dt: matmul_flops(args.threads, dt == "bfloat16", shape=(256, 576, 1536))
             for dt in ("float32", "bfloat16")}
    default_bs = GenerateConfig().batch_size
    specs = [RunSpec("naive", 1, share_prefill=False)]
    specs += [RunSpec(f"bs{b}", b) for b in (int(x) for x in args.batch_sizes.split(","))]
    if f"bs{default_bs}" not in {s.name for s in specs}:
        specs.append(RunSpec(f"bs{default_bs}", default_bs))
    if not args.no_options:
        specs += [RunSpec("bf16", default_bs, bf16=True, users=args.bf16_users),
                  RunSpec("newline", default_bs, stop_at_newline=True)]
    print(f"{len(prompts)} users, {len(specs)} configurations", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="glossrec-bench-gen-") as tmp:
        results = {s.name: run_config(s, prompts, args, Path(tmp)) for s in specs}
    load.append(round(os.getloadavg()[0], 2))
    summary = summarize(results, flops, load, args)
    write_json(args.out, summary)
    print_table(summary)
    print(f"\nwrote {args.out}")
    return 0 if summary["checks"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
