"""Training throughput on CPU: the embedded SmolLM2-135M with LoRA on real Beauty training texts.

Each arm runs glossrec's own training loop (``glossrec.train.train``) for a few optimizer steps
of 16 texts (batch 4 x accumulation 4) in its own subprocess, on the same seeded sample of
training examples, and reports examples/s over the steps after the first (warm-up), peak RSS,
and the user/system CPU seconds of the timed steps:

- ``old``: the loop as it was: full-vocabulary fp32 logits at every position, the padding mask
  passed to attention, random batches, micro-batches never split, whole-text loss, every
  history item that fits;
- ``label-pos``: the LM head only at label positions, no padding mask (SDPA's fused causal
  kernel), length-grouped batches, micro-batches split above 1,024 tokens, freed memory kept
  for the next micro-batch (whole-text loss);
- ``target``: the same with target-only loss (the head runs on ~10% of positions);
- ``target-h5``: and prompts of the newest 5 history items (``prompt.max_history_items``);
- ``target-h5-bf16``: and bf16 autocast (only where the CPU has native bf16), the frozen base
  weights stored in bf16 (``train.bf16_weights``, the default);
- ``full-h5-bf16``: the whole-text loss with the newest 5 items in bf16 (the recipe of the
  whole-text lineage), ``full-h5-bf16-castw`` the same with float32 base weights that
  autocast casts at every call (``train.bf16_weights = false``), and ``full-h5-bf16-trim``
  with freed memory returned to the OS after every micro-batch (``train.trim_memory``);
- ``full-h20``: the recipe of the 20-item whole-text lineage in float32 (whole-text loss, the
  newest 20 history items), as it trains where the CPU has no native bf16;
- ``target-h5-4bit``: ``target-h5`` with the paper's QLoRA weights and optimizer: the base
  model loaded as 4-bit NF4 layers (``model.load_in_4bit = true``, bitsandbytes' CPU backend,
  float32 compute), which also turns on gradient checkpointing as the paper's setup does, and
  8-bit AdamW. Compare it with ``target-h5`` (fp32 weights, torch AdamW) in one run:
  ``--arms target-h5 target-h5-4bit``.

The FLOP bound of an arm is the matmul FLOPs its steps needed, at the fp32 (or bf16) rate of
F.linear at one of the model's own shapes on this machine (the best of several timings): forward
2 x body parameters per token, backward the same again (input gradients through the frozen
weights; LoRA's own weight gradients are negligible), the LM head (2 x 576 x 49,152 per
position, forward + backward) at the positions that compute it, and attention: 4 x context x
width per token per layer forward, twice that backward (the mean padded length as the context,
halved for the causal mask). Element-wise work (norms, activations, softmax, the optimizer) is
not counted, so no loop can reach 100%. Nor are the 4-bit arm's extra costs: dequantizing its
weights at every matmul and the forward pass gradient checkpointing recomputes.

Run alone on an idle machine:  .venv/bin/python bench/train_speed.py [--steps 4] [--arms ...]
(the 4-bit arm against fp32 LoRA: --arms target-h5 target-h5-4bit)
Writes bench/results/train_speed.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, machine, matmul_flops, peak_rss_mb, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "amazon2014" / "beauty"
ARMS: dict[str, dict[str, Any]] = {
    "old": {"label_positions": False, "group_by_length": False, "loss": "full",
            "max_batch_tokens": None},
    "label-pos": {"loss": "full"},
    "target": {"loss": "target"},
    "target-h5": {"loss": "target", "max_history_items": 5},
    "target-h5-bf16": {"loss": "target", "max_history_items": 5, "bf16": True},
    "target-h5-4bit": {"loss": "target", "max_history_items": 5, "load_in_4bit": True},
    "full-h5-bf16": {"loss": "full", "max_history_items": 5, "bf16": True},
    "full-h5-bf16-castw": {"loss": "full", "max_history_items": 5, "bf16": True,
                           "bf16_weights": False},
    "full-h5-bf16-trim": {"loss": "full", "max_history_items": 5, "bf16": True,
                          "trim_memory": True},
    "full-h20": {"loss": "full", "max_history_items": 20},
}


def worker(arm: str, data: Path, steps: int, seed: int, out: Path, grad_accum: int = 4,
           profile: int = 0) -> None:
    """One arm: train `steps` optimizer steps, time each, write a JSON summary to `out`."""
    import torch

    import glossrec.train as tr
    from glossrec.config import load_config
    from glossrec.data import load_dataset
    from glossrec.models import load_tokenizer
    from glossrec.prompts import PromptBuilder, make_pairs
    from glossrec.splits import make_splits, sample_users
    from glossrec.train import loop, loss as train_loss

    spec = dict(ARMS[arm])
    if not spec.pop("label_positions", True):
        full_logits = train_loss.loss_sum
        # Where the loop's step and the validation loss look them up.
        loop.loss_sum = train_loss.loss_sum = (  # type: ignore[assignment]
            lambda m, b, d, **kw: full_logits(m, b, d, False, False))
        # glibc's defaults: large tensors mapped and unmapped at every micro-batch
        loop.kept_freed_memory = contextlib.nullcontext  # type: ignore[assignment]
    cfg = load_config(None, {
        "data.path": str(data),
        "model": {"name": "embedded:smollm2", "load_in_4bit": spec.pop("load_in_4bit", False)},
        "prompt": {"max_history_items": spec.pop("max_history_items", None)},
        "train": {"max_steps": steps, "warmup_steps": 1, "save_steps": 10_000,
                  "grad_accum": grad_accum, "bf16": spec.pop("bf16", False), **spec}})
    ds = load_dataset(cfg.data.path, cfg.data.item_format, cfg.data.title_words)
    examples = sample_users(make_splits(ds, cfg.split).train,
                            cfg.train.batch_size * grad_accum * steps, seed)
    builder = PromptBuilder.from_config(load_tokenizer(cfg.model), cfg.prompt, ds.catalog.item_format)
    pairs = make_pairs(examples, ds.catalog, builder, "train")

    optimizers: list[str] = []
    make_optimizer = loop._optimizer

    def recorded(*args: Any, **kwargs: Any) -> Any:
        opt = make_optimizer(*args, **kwargs)
        optimizers.append(type(opt).__name__)
        return opt

    loop._optimizer = recorded  # type: ignore[assignment]
    marks: list[tuple[float, Any]] = []
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else None

    def on_step(state: Any) -> None:
        marks.append((time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)))
        if prof is not None and len(marks) == 1:
            prof.start()  # the timed steps only
        elif prof is not None and len(marks) == steps:
            prof.stop()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = tr.train(cfg, Path(tmp) / "run", pairs, (), on_step=on_step)
    top: list[dict[str, Any]] = []
    if prof is not None and len(marks) > 1:
        top = _top_ops(prof, profile)
    hist = [h for h in result.history if "loss" in h]
    (w0, u0), (w1, u1) = marks[0], marks[-1]  # timed: steps 2..N
    timed = hist[1:]
    tokens = sum(h["padded_tokens"] for h in timed)
    summary = {
        "arm": arm, "spec": ARMS[arm], "steps": len(hist), "timed_steps": len(timed),
        "examples": sum(h["examples"] for h in timed),
        "seconds": w1 - w0, "user_s": u1.ru_utime - u0.ru_utime, "sys_s": u1.ru_stime - u0.ru_stime,
        "step_seconds": [round(b[0] - a[0], 2) for a, b in zip(marks, marks[1:])],
        "padded_tokens": tokens, "real_tokens": sum(h["real_tokens"] for h in timed),
        "label_tokens": sum(h["tokens"] for h in timed),
        "head_positions": sum(h["padded_tokens"] if not ARMS[arm].get("label_positions", True)
                              else h["tokens"] for h in timed),
        "peak_rss_mb": round(peak_rss_mb(), 1), "losses": [h["loss"] for h in hist],
        "threads": torch.get_num_threads(), "setup_s": marks[0][0] - t0 if marks else None,
        "optimizer": optimizers[0] if optimizers else None, "grad_accum": grad_accum,
        "linear4bit_layers": _linear4bit_layers(result.model),
        "profile": top,
    }
    out.write_text(json.dumps(summary))


def _top_ops(prof: Any, n: int) -> list[dict[str, Any]]:
    """The `n` torch ops with the most self CPU time in the profiled steps (seconds, calls)."""
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "total_s": e.cpu_time_total / 1e6,
             "calls": e.count} for e in rows[:n]]


def _linear4bit_layers(model: Any) -> int:
    """bitsandbytes 4-bit layers in the trained model (0 for a full-precision arm)."""
    if getattr(model, "is_loaded_in_4bit", False):
        import bitsandbytes as bnb

        return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    return 0


def flop_bound(r: dict[str, Any], rate: float) -> float:
    """Examples/s if every matmul ran at `rate` FLOP/s (see the module docstring)."""
    body = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)  # SmolLM2-135M, no embeddings
    head = 576 * 49152
    context = r["padded_tokens"] / r["examples"] / 2
    flops = (2 * 2 * body * r["padded_tokens"] + 2 * 2 * head * r["head_positions"]
             + 3 * 4 * 30 * 576 * context * r["padded_tokens"])
    return r["examples"] / (flops / rate)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per arm (first untimed)")
    p.add_argument("--grad-accum", type=int, default=4,
                   help="micro-batches of 4 texts per step (4: the paper's 16 texts; 1 for a smoke run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--json", type=Path, default=RESULTS / "train_speed.json")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile the timed steps (torch.profiler) and report each arm's N "
                        "costliest ops by self CPU time (profiling slows the steps a little)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.data, args.steps, args.seed, args.out, args.grad_accum,
               args.profile)
        return 0
    if not (args.data / "sequences.jsonl.gz").exists() and not (args.data / "sequences.jsonl").exists():
        print(f"{args.data}: no dataset here (see ../shared/data/amazon2014/README)", file=sys.stderr)
        return 2
    before = machine()
    threads = before["cores"]
    rates = {"fp32": matmul_flops(threads), "bf16": matmul_flops(threads, bf16=True)}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            if ARMS[arm].get("bf16") and not before["native_bf16"]:
                print(f"{arm}: skipped (no native bf16 on this CPU)")
                continue
            out = Path(tmp) / f"{arm}.json"
            subprocess.run([sys.executable, __file__, "--worker", arm, "--out", str(out),
                            "--data", str(args.data), "--steps", str(args.steps),
                            "--seed", str(args.seed), "--grad-accum", str(args.grad_accum),
                            "--profile", str(args.profile)],
                           check=True, cwd=ROOT,
                           env={**os.environ, "TQDM_DISABLE": "1"})
            r = json.loads(out.read_text())
            r["examples_per_s"] = r["examples"] / r["seconds"]
            r["bound_examples_per_s"] = flop_bound(r, rates["bf16" if ARMS[arm].get("bf16") else "fp32"])
            r["fraction_of_bound"] = r["examples_per_s"] / r["bound_examples_per_s"]
            results[arm] = r
            print(f"{arm}: {r['examples_per_s']:.3f} examples/s, peak {r['peak_rss_mb']:.0f} MB, "
                  f"{r['optimizer']}, {r['linear4bit_layers']} Linear4bit layers", flush=True)
    base = results.get("old", {}).get("examples_per_s")
    for r in results.values():
        r["speedup_vs_old"] = r["examples_per_s"] / base if base else None
    fp32, four = results.get("target-h5"), results.get("target-h5-4bit")
    if fp32 and four:
        four["vs_fp32_lora"] = {"examples_per_s": four["examples_per_s"] / fp32["examples_per_s"],
                                "peak_rss": four["peak_rss_mb"] / fp32["peak_rss_mb"]}
    write_results(args.json, {"matmul_flops": rates, "steps": args.steps,
                              "grad_accum": args.grad_accum, "arms": results}, before)
    print(f"\nmatmul rate: fp32 {rates['fp32'] / 1e9:.1f} GFLOP/s, bf16 {rates['bf16'] / 1e9:.1f} "
          f"GFLOP/s; load average {before['load_avg_1m']} before, "
          f"{os.getloadavg()[0]:.2f} after; {before['cpu']}, {threads} cores")
    print("| arm | examples/s | speed-up | s/step | tokens/example | sys s / user s | peak RSS MB | FLOP bound ex/s | of bound | optimizer |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for arm, r in results.items():
        per = r["seconds"] / max(r["timed_steps"], 1)
        sp = f"{r['speedup_vs_old']:.2f}x" if r["speedup_vs_old"] else "-"
        print(f"| {arm} | {r['examples_per_s']:.3f} | {sp} | {per:.1f} | "
              f"{r['padded_tokens'] / r['examples']:.0f} | {r['sys_s']:.0f} / {r['user_s']:.0f} | "
              f"{r['peak_rss_mb']:.0f} | {r['bound_examples_per_s']:.2f} | "
              f"{r['fraction_of_bound']:.0%} | {r['optimizer']} |")
    for arm, r in results.items():
        if r["profile"]:
            print(f"\n{arm}: the costliest ops of the timed steps ({r['seconds']:.1f} s)")
            print("| op | self s | total s | calls |\n|---|---:|---:|---:|")
            for o in r["profile"]:
                print(f"| {o['op']} | {o['self_s']:.2f} | {o['total_s']:.2f} | {o['calls']} |")
    if fp32 and four:
        ratio = four["vs_fp32_lora"]
        print(f"\n4-bit QLoRA against fp32 LoRA: {ratio['examples_per_s']:.2f}x the examples/s, "
              f"{ratio['peak_rss']:.2f}x the peak RSS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
