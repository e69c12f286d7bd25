"""CLI commands: train."""

from __future__ import annotations

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
    set_: SetOpt = None,
) -> None:
    """Fine-tune LoRA adapters (the GLoSS recipe); writes OUT/config.toml and OUT/adapter/."""
    from glossrec.config import load_config
    from glossrec.rundir import RunDir
    from glossrec.train import latest_checkpoint, train_from_config

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
    rd.write_config(cfg)
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        typer.echo(f"resuming from {ckpt}", err=True)
    result = train_from_config(cfg, out)
    best = (f"best valid loss {result.best_valid_loss:.4f} at step {result.best_step}"
            if result.best_valid_loss is not None else "no validation set")
    stop = ", stopped early" if result.stopped_early else ""
    typer.echo(f"trained {result.steps} steps ({result.epochs:.2f} epochs){stop}; {best}; "
               f"adapter: {result.adapter_dir}")
