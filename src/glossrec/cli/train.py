"""CLI commands: train."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from glossrec.cli.app import SetOpt, app, show_progress_logs, with_sets


@app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (created; resumed if it "
                                      "has checkpoints).")],
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="TOML config; default: OUT/config.toml if present, else the "
        "paper defaults.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after N optimizer steps.")] = None,
    max_examples: Annotated[Optional[int], typer.Option(
        help="Train on a reproducible random subset of N examples.")] = None,
    max_valid_examples: Annotated[Optional[int], typer.Option(
        help="Validate on a reproducible random subset of N examples (CPU budgets).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Dataset folder (overrides data.path).")] = None,
    model: Annotated[Optional[str], typer.Option(
        help='Base model: hub name, local folder, .gguf file or "embedded:smollm2".')] = None,
    processes: Annotated[int, typer.Option(
        "--processes", min=1, help="Data-parallel processes on this machine (torchrun; gloo on "
        "CPU, NCCL on GPUs). Several machines: `accelerate launch` or torchrun start "
        "`python -m glossrec.cli train ...` on each.")] = 1,
    set_: SetOpt = None,
) -> None:
    """Fine-tune LoRA adapters (the GLoSS recipe); writes OUT/config.toml and OUT/adapter/."""
    from glossrec.config import load_config
    from glossrec.rundir import RunDir
    from glossrec.train import latest_checkpoint, train_from_config

    if processes > 1:
        raise typer.Exit(_launch(processes))
    show_progress_logs()
    rd = RunDir(out)
    if config is None and rd.is_run():
        config = rd.config
    overrides = {"train.max_steps": max_steps, "train.max_examples": max_examples,
                 "train.max_valid_examples": max_valid_examples,
                 "data.path": str(data.expanduser().resolve()) if data is not None else None,
                 "model.name": model}
    cfg = load_config(config, with_sets(overrides, set_))
    cfg.out = out.resolve()
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        rd.write_config(cfg)
    ckpt = latest_checkpoint(out)
    if ckpt is not None and main_process:
        typer.echo(f"resuming from {ckpt}", err=True)
    result = train_from_config(cfg, out)
    if not main_process:
        return
    best = (f"best valid loss {result.best_valid_loss:.4f} at step {result.best_step}"
            if result.best_valid_loss is not None else "no validation set")
    stop = ", stopped early" if result.stopped_early else ""
    typer.echo(f"trained {result.steps} steps ({result.epochs:.2f} epochs){stop}; {best}; "
               f"adapter: {result.adapter_dir}")


def _launch(processes: int) -> int:
    """Run this same command in `processes` data-parallel copies (torchrun, one machine); the
    exit code is torchrun's (it stops every copy when one fails)."""
    args = list(sys.argv[1:])
    for i, a in enumerate(args):  # drop --processes N / --processes=N
        if a == "--processes":
            del args[i:i + 2]
            break
        if a.startswith("--processes="):
            del args[i]
            break
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={processes}", "-m", "glossrec.cli", *args]
    return subprocess.call(cmd)
