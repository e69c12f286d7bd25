"""Choose the small-model recipe on validation users: a short training per arm, compared by the
target-only validation loss (the log-likelihood of the held-out next item's text, so arms with
different history lengths and methods are comparable), on full Beauty.

Every arm trains the embedded SmolLM2-135M for the same number of optimizer steps of 16 texts on
the same seeded order of training examples, with target-only loss, and is validated on the same
validation users (their second-to-last item: never a training target). Nothing here looks at
test users. Arms are resumable (each is an ordinary run folder under --runs).

Run alone on an idle machine:
  .venv/bin/python bench/recipe_sweep.py [--steps 40] [--arms lora-3e-4 lora-1e-3 ...]
Writes bench/results/recipe_sweep.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, machine, peak_rss_mb, print_markdown, reset_peak_rss, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "amazon2014" / "beauty"
ARMS: dict[str, dict[str, Any]] = {
    "lora-1e-4-h5": {"train.learning_rate": 1e-4, "prompt.max_history_items": 5},
    "lora-1e-3-h5": {"train.learning_rate": 1e-3, "prompt.max_history_items": 5},
    "lora-3e-3-h5": {"train.learning_rate": 3e-3, "prompt.max_history_items": 5},
    "lora-1e-3-h20": {"train.learning_rate": 1e-3, "prompt.max_history_items": 20},
    "lora-3e-3-h20": {"train.learning_rate": 3e-3, "prompt.max_history_items": 20},
    "full-5e-5-h5": {"train.learning_rate": 5e-5, "train.method": "full",
                     "prompt.max_history_items": 5},
    "full-2e-4-h5": {"train.learning_rate": 2e-4, "train.method": "full",
                     "prompt.max_history_items": 5},
    "full-5e-4-h5": {"train.learning_rate": 5e-4, "train.method": "full",
                     "prompt.max_history_items": 5},
}


def run_arm(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from glossrec.config import load_config
    from glossrec.train import train_from_config

    cfg = load_config(None, {
        "data.path": str(args.data), "model.name": "embedded:smollm2",
        "train.loss": "target", "train.max_steps": args.steps, "train.warmup_steps": 4,
        "train.schedule": "constant", "train.eval_steps": args.steps, "train.save_steps": 5,
        "train.max_valid_examples": args.valid, "train.bf16": args.bf16, **ARMS[name]})
    reset_peak_rss()
    t0 = time.perf_counter()
    res = train_from_config(cfg, args.runs / name)
    losses = [h["loss"] for h in res.history if "loss" in h]
    valid = [h["valid_loss"] for h in res.history if "valid_loss" in h]
    seconds = max((h.get("seconds", 0.0) for h in res.history), default=0.0)
    return {"arm": name, "overrides": ARMS[name], "steps": res.steps,
            "examples": sum(h.get("examples", 0) for h in res.history),
            "valid_loss": valid[-1] if valid else None,
            "train_loss_last5": sum(losses[-5:]) / max(len(losses[-5:]), 1),
            "train_seconds": round(seconds, 1), "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: where the CPU has native bf16)")
    p.add_argument("--valid", type=int, default=128, help="validation examples")
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "recipe-sweep")
    p.add_argument("--json", type=Path, default=RESULTS / "recipe_sweep.json")
    args = p.parse_args(argv)
    before = machine()
    rows = []
    for arm in args.arms:
        rows.append(run_arm(arm, args))
        r = rows[-1]
        print(f"{arm}: valid loss {r['valid_loss']:.4f} after {r['examples']} examples "
              f"({r['train_seconds']:.0f} s)", flush=True)
    write_results(args.json, {"steps": args.steps, "valid_examples": args.valid, "arms": rows},
                  before)
    print(f"\nload average {before['load_avg_1m']} before; {before['cpu']}, {before['cores']} cores")
    print_markdown(["arm", "examples", "valid loss (target)", "train loss (last 5)", "train s",
                    "peak RSS MB"],
                   [[r["arm"], str(r["examples"]), f"{r['valid_loss']:.4f}",
                     f"{r['train_loss_last5']:.4f}", f"{r['train_seconds']:.0f}",
                     f"{r['peak_rss_mb']:.0f}"] for r in rows], "l")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
