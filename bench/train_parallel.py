"""Data-parallel training throughput on CPU: `glossrec train --processes N` against one process,
at the same global batch, on the embedded SmolLM2-135M and real Beauty training texts.

Each arm is the real command (``python -m glossrec.cli train --config C --out TMP
--max-steps S [--processes N]``) in a fresh run folder: N torchrun processes (gloo), each with
cores / N threads, each computing the gradient of its share of every 16-text step, summed
across processes before the optimizer step (glossrec.train.parallel._Group). Examples/s are taken from
the run's own training log over the steps after the first (warm-up and process-group setup
excluded), so model loading is not in the ratio; wall time is reported too. The tests show the
loss curves agree (tests/test_train_parallel.py: relative 1e-4); here the losses of both arms
are printed side by side.

Run alone on an idle machine:
    .venv/bin/python bench/train_parallel.py [--steps 5] [--processes 1 2]
Writes bench/results/train_parallel.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, machine, print_columns, write_results  # noqa: E402


def arm(config: Path, processes: int, steps: int, folder: Path) -> dict[str, Any]:
    """One `glossrec train` run; examples/s over steps 2..S from its train_log.jsonl."""
    out = folder / f"p{processes}"
    cmd = [sys.executable, "-m", "glossrec.cli", "train", "--config", str(config), "--out", str(out),
           "--max-steps", str(steps), "--set", "train.eval_steps=100000",
           "--set", f"train.save_steps={steps}"]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    # wait4: this arm's own usage (its largest process), not the max over every arm so far
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"arm with {processes} processes failed: {cmd}")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps_log = [r for r in log if "loss" in r and "step" in r]
    timed = steps_log[1:]
    seconds = timed[-1]["seconds"] - steps_log[0]["seconds"]
    examples = sum(r["examples"] for r in timed)
    return {"processes": processes, "steps": len(steps_log), "timed_steps": len(timed),
            "examples": examples, "seconds": round(seconds, 2),
            "examples_per_s": examples / seconds, "wall_s": round(wall, 1),
            "losses": [round(r["loss"], 5) for r in steps_log],
            "peak_rss_mb_largest_process": usage.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "smollm2-beauty.toml")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", type=Path, default=RESULTS / "train_parallel.json")
    args = p.parse_args(argv)

    before = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="train-parallel-") as tmp:
        for n in args.processes:
            rows.append(arm(args.config.resolve(), n, args.steps, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["examples_per_s"]
    for r in rows:
        r["speedup_vs_first"] = r["examples_per_s"] / base
    write_results(args.json, {"config": str(args.config), "arms": rows}, before)
    print(f"\nload average {before['load_avg_1m']} before; {args.steps} steps of the global batch, "
          "the first excluded")
    print_columns(rows, [("processes", "processes", "{}"), ("examples/s", "examples_per_s", "{:.3f}"),
                         ("speed-up", "speedup_vs_first", "{:.2f}x"), ("wall s", "wall_s", "{}"),
                         ("losses", "losses", "{}")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
