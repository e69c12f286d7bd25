"""One command for the paths that only a GPU runs, on a tiny random Llama (no hub weights).

Checks, each the real command (``python -m glossrec.cli ...``) in its own process, then an
inspection of what it wrote:

- ``qlora``: the paper's config (configs/paper/llama-1b-beauty.toml, only the model swapped and
  the sizes cut) through ``glossrec run``: 4-bit QLoRA chosen automatically on CUDA, 8-bit AdamW,
  grounded generation (generate.constrain = "catalog"), dense retrieval with the embedded
  encoder, evaluation. Passes when the saved adapter loads over a base of Linear4bit layers on
  the GPU, the optimizer state is 8-bit, every text is a catalog item and every user is scored.
- ``vllm``: the same run with generate.backend = "vllm" (free text; vLLM serves the base model
  with the LoRA adapter). Passes when every user gets texts; how many users' first texts agree
  with the hf backend's is reported.
- ``ddp``: ``glossrec train --processes 2`` (torchrun, NCCL) against one process at the same
  global batch. Passes when the loss curves agree within a relative 1e-2 (bf16 and 4-bit
  kernels sum in another order than one process does).

On a machine without CUDA (or with one GPU, or without vllm) a check is reported as skipped
with the reason. ``--rehearse-on-cpu`` runs the qlora and ddp checks on CPU instead (4-bit
through bitsandbytes' CPU backend, data parallelism over gloo), which tests this script itself.

Run from a checkout set up with `make setup` (the test extra) plus, for the vllm check,
`pip install -e ".[vllm]"`:
    .venv/bin/python bench/gpu_check.py
Writes bench/results/gpu_check.json (or --json) and prints a pass/fail/skipped table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, machine, print_columns, write_results  # noqa: E402

PAPER = ROOT / "configs" / "paper" / "llama-1b-beauty.toml"
LAYERS = 2
USERS = 4
TIMEOUT_S = 900
"""Seconds one glossrec command may run (--timeout; a GPU needs seconds, a busy CPU minutes)."""
_timeout = {"s": TIMEOUT_S}
DDP_TOLERANCE = 1e-2

# The paper's recipe with the sizes cut to seconds: a few optimizer steps, a few users.
SMALL = {"train.max_steps": 4, "train.save_steps": 2, "train.warmup_steps": 1,
         "train.batch_size": 2, "train.grad_accum": 2, "train.max_examples": 16,
         "train.max_valid_examples": 4, "generate.num_beams": 2, "generate.num_return": 2,
         "generate.max_new_tokens": 8, "evaluate.users": USERS,
         "retrieve.encoder": "embedded:all-minilm-l6-v2"}


# --- the environment and the tiny model ------------------------------------------------------


def environment() -> dict[str, Any]:
    """What the checks depend on: torch and CUDA, the GPUs, bitsandbytes, vllm."""
    import torch

    from glossrec.models import bitsandbytes_version

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    vllm = None
    if find_spec("vllm") is not None:
        from importlib.metadata import version

        vllm = version("vllm")
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "gpus": gpus,
            "bitsandbytes": bitsandbytes_version(), "vllm": vllm}


def build_inputs(folder: Path) -> tuple[Path, Path]:
    """A tiny random Llama (hidden 256: LoRA matrices big enough for 8-bit optimizer state)
    and a tiny dataset whose titles its tokenizer knows (tests/conftest.py builds both)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import _WORDS, build_tiny_lm, write_tiny_dataset

    model = build_tiny_lm(folder / "model", hidden=256, layers=LAYERS, intermediate=512)
    rng = random.Random(0)
    titles = {f"i{j}": " ".join(rng.choice(_WORDS[:60]) for _ in range(rng.randint(2, 4)))
              for j in range(40)}
    users = {f"u{u:02d}": rng.sample(sorted(titles), rng.randint(4, 7)) for u in range(40)}
    return model, write_tiny_dataset(folder / "data", titles, users)


# --- running glossrec ------------------------------------------------------------------------


def glossrec(*args: str, sets: dict[str, Any] | None = None, processes: int = 1) -> None:
    """`python -m glossrec.cli ARGS --set K=V ...`; a failure raises with its output's tail."""
    cmd = [sys.executable, "-m", "glossrec.cli", *args]
    for key, value in (sets or {}).items():
        cmd += ["--set", f"{key}={value}"]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=_timeout["s"])
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(cmd[2:5])} exited {proc.returncode}: " + " | ".join(tail))


def run_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["run", str(PAPER), "--data", str(data), "--out", str(out), "--no-baselines",
            "--set", f"model.name={model}"]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in _rows(run / "train_log.jsonl") if "loss" in r]


# --- the checks ------------------------------------------------------------------------------


def _device(rehearse: bool) -> str:
    return "cpu" if rehearse else "cuda"


def need_qlora(env: dict[str, Any], rehearse: bool) -> str | None:
    from glossrec.models import bitsandbytes_missing

    if not rehearse and not env["cuda_available"]:
        return "no CUDA device (torch.cuda.is_available() is False)"
    return bitsandbytes_missing("4bit", _device(rehearse))


def check_qlora(model: Path, data: Path, work: Path, rehearse: bool) -> str:
    """4-bit QLoRA training, grounded generation, dense retrieval, evaluation on the device."""
    import bitsandbytes as bnb
    import torch

    from glossrec.config import ModelConfig
    from glossrec.data import load_dataset
    from glossrec.models import load_model
    from glossrec.train import latest_checkpoint

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import uint8_tensors  # the test suite's check of an 8-bit optimizer state

    out = work / "qlora"
    sets = {**SMALL, "generate.constrain": "catalog"}
    if rehearse:  # the automatic choice is 4-bit on CUDA only
        sets["model.load_in_4bit"] = "true"
    glossrec(*run_args(model, data, out), sets=sets)
    device = _device(rehearse)
    loaded, _ = load_model(ModelConfig(name=str(model), load_in_4bit=True if rehearse else None),
                           adapter_dir=out / "adapter", device=device)
    quantized = [m for m in loaded.modules() if isinstance(m, bnb.nn.Linear4bit)]
    on = {str(m.weight.device) for m in quantized}
    if len(quantized) != 7 * LAYERS or not all(d.startswith(device) for d in on):
        raise RuntimeError(f"expected {7 * LAYERS} Linear4bit layers on {device}, "
                           f"found {len(quantized)} on {sorted(on)}")
    ckpt = latest_checkpoint(out)
    state = torch.load(ckpt / "optimizer.pt", weights_only=False, map_location="cpu")
    if uint8_tensors(state["state"]) == 0:
        raise RuntimeError("the optimizer state is not 8-bit (torch AdamW was used)")
    catalog = set(load_dataset(data).catalog.texts())
    texts = [t for r in _rows(out / "generations.jsonl") for t in r["texts"]]
    outside = [t for t in texts if t not in catalog]
    if outside:
        raise RuntimeError(f"grounded texts outside the catalog: {outside[:3]}")
    scored = json.loads((out / "metrics.json").read_text())["overall"]["users"]
    if scored != USERS:
        raise RuntimeError(f"{scored} users scored, not {USERS}")
    losses = _losses(out)
    return (f"{len(quantized)} Linear4bit on {sorted(on)[0]}, 8-bit AdamW; loss "
            f"{losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps; {len(texts)} grounded "
            f"texts, all catalog items; {scored} users scored")


def need_vllm(env: dict[str, Any], rehearse: bool) -> str | None:
    if rehearse:
        return "vLLM runs on CUDA only here (no CPU rehearsal)"
    if not env["cuda_available"]:
        return "no CUDA device (torch.cuda.is_available() is False)"
    if env["vllm"] is None:
        return 'vllm is not installed (pip install -e ".[vllm]")'
    return None


def check_vllm(model: Path, data: Path, work: Path, rehearse: bool) -> str:
    """The vllm backend generating with a trained adapter; its texts against the hf backend's."""
    hf, vllm = work / "vllm-hf", work / "vllm"
    glossrec(*run_args(model, data, hf), sets=SMALL)
    weights = {"model.weights": str(hf / "adapter")}
    glossrec(*run_args(model, data, vllm), sets={**SMALL, **weights, "generate.backend": "vllm"})
    ours, theirs = _rows(vllm / "generations.jsonl"), _rows(hf / "generations.jsonl")
    if len(ours) != USERS or not all(r["texts"] for r in ours):
        raise RuntimeError(f"vllm generated texts for {sum(bool(r['texts']) for r in ours)} "
                           f"of {USERS} users")
    first = {r["user_id"]: r["texts"][0] for r in theirs}
    same = sum(first.get(r["user_id"]) == r["texts"][0] for r in ours)
    return (f"{USERS} users, {sum(len(r['texts']) for r in ours)} texts; the first text equals "
            f"the hf backend's for {same} of {USERS} users")


def need_ddp(env: dict[str, Any], rehearse: bool) -> str | None:
    if rehearse:
        return need_qlora(env, rehearse)
    if len(env["gpus"]) < 2:
        return f"data-parallel training over NCCL needs 2 GPUs; {len(env['gpus'])} found"
    return need_qlora(env, rehearse)


def check_ddp(model: Path, data: Path, work: Path, rehearse: bool) -> str:
    """`glossrec train --processes 2` (NCCL) follows the 1-process loss curve."""
    sets = {k: v for k, v in SMALL.items() if k.startswith("train.")}
    if rehearse:
        sets["model.load_in_4bit"] = "true"
    curves = []
    for n in (1, 2):
        out = work / f"ddp-{n}"
        glossrec("train", "--config", str(PAPER), "--data", str(data), "--model", str(model),
                 "--out", str(out), sets=sets, processes=n)
        curves.append(_losses(out))
    one, two = curves
    if len(one) != len(two) or not one:
        raise RuntimeError(f"{len(one)} steps with 1 process, {len(two)} with 2")
    worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(one, two))
    if not worst <= DDP_TOLERANCE or not all(math.isfinite(x) for x in two):
        raise RuntimeError(f"2-process losses {two} differ from 1-process {one} "
                           f"(relative {worst:.2e} > {DDP_TOLERANCE})")
    backend = "gloo" if rehearse else "NCCL"
    return (f"2 processes ({backend}) follow 1 process over {len(one)} steps: largest relative "
            f"loss difference {worst:.1e}")


CHECKS: dict[str, tuple[Callable[[dict[str, Any], bool], str | None],
                        Callable[[Path, Path, Path, bool], str]]] = {
    "qlora": (need_qlora, check_qlora),
    "vllm": (need_vllm, check_vllm),
    "ddp": (need_ddp, check_ddp),
}
WHAT = {"qlora": "4-bit QLoRA training + grounded generation (glossrec run, paper config)",
        "vllm": "vLLM backend generation with the adapter",
        "ddp": "data-parallel training, 2 processes (glossrec train --processes 2)"}


# --- driver ----------------------------------------------------------------------------------


def one_check(name: str, model: Path, data: Path, work: Path, rehearse: bool) -> dict[str, Any]:
    """Run one check in this process: {"status": "pass" | "fail", "detail": ...}."""
    t0 = time.perf_counter()
    try:
        detail = CHECKS[name][1](model, data, work, rehearse)
        status = "pass"
    except Exception as e:  # a check's failure is a row of the table, not a crash of the rest
        status, detail = "fail", f"{type(e).__name__}: {e}"
    return {"status": status, "detail": detail, "seconds": round(time.perf_counter() - t0, 1)}


def run_isolated(name: str, model: Path, data: Path, work: Path, rehearse: bool,
                 timeout: int = TIMEOUT_S) -> dict[str, Any]:
    """One check in its own process, so a CUDA crash or a hang fails that row alone."""
    cmd = [sys.executable, __file__, "--one", name, "--model", str(model), "--data", str(data),
           "--work", str(work), "--timeout", str(timeout)]
    cmd += ["--rehearse-on-cpu"] if rehearse else []
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3 * timeout)
    except subprocess.TimeoutExpired:
        return {"status": "fail", "detail": f"timed out after {3 * timeout} s",
                "seconds": round(time.perf_counter() - t0, 1)}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-10:])
        return {"status": "fail", "detail": f"the check's process exited {proc.returncode}: {tail}",
                "seconds": round(time.perf_counter() - t0, 1)}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None,
                   help="results file (default: bench/results/gpu_check.json, or "
                        "gpu_check_cpu_rehearsal.json with --rehearse-on-cpu)")
    p.add_argument("--rehearse-on-cpu", action="store_true",
                   help="run the qlora and ddp checks on CPU (bitsandbytes CPU backend, gloo)")
    p.add_argument("--checks", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    p.add_argument("--timeout", type=int, default=TIMEOUT_S,
                   help="seconds one glossrec command may run before its check fails")
    p.add_argument("--one", choices=list(CHECKS), help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    rehearse = args.rehearse_on_cpu
    if rehearse:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the checks and their commands see no GPU
    if args.one:
        _timeout["s"] = args.timeout
        print(json.dumps(one_check(args.one, args.model, args.data, args.work, rehearse)))
        return 0

    before = machine()
    env = environment()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        inputs: tuple[Path, Path] | None = None
        for name in args.checks:
            row = {"check": name, "what": WHAT[name]}
            reason = CHECKS[name][0](env, rehearse)
            if reason is not None:
                rows.append({**row, "status": "skipped", "detail": reason, "seconds": None})
                print(f"{name}: skipped ({reason})", flush=True)
                continue
            if inputs is None:
                inputs = build_inputs(Path(tmp))
            work = Path(tmp) / name
            work.mkdir()
            rows.append({**row, **run_isolated(name, *inputs, work, rehearse, args.timeout)})
            print(f"{name}: {rows[-1]['status']} ({rows[-1]['detail']})", flush=True)
    default = "gpu_check_cpu_rehearsal.json" if rehearse else "gpu_check.json"
    path = write_results(args.json or RESULTS / default,
                         {"mode": "cpu rehearsal" if rehearse else "gpu", "environment": env,
                          "checks": rows}, before)
    print()
    print_columns(rows, [("check", "check", "{}"), ("status", "status", "{}"),
                         ("seconds", "seconds", "{}"), ("detail", "detail", "{}")])
    print(f"\n{path}")
    return 1 if any(r["status"] == "fail" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
