"""CLI command: run (the whole GLoSS pipeline into one run directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glossrec.cli.app import JsonOutOpt, SetOpt, app, print_json, show_progress_logs, with_sets


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="TOML config (see configs/).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Run directory (default: the config's `out`).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Dataset folder (overrides data.path of the config; configs/paper/ set none).")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Cap optimizer steps.")] = None,
    users: Annotated[Optional[int], typer.Option("--users", help="Evaluate a random sample of N users.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo training and generation.")] = False,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="Skip the LIS / other-retriever rows.")] = False,
    set_: SetOpt = None,
    json_out: JsonOutOpt = False,
) -> None:
    """data -> train -> generate -> retrieve -> evaluate, skipping finished stages."""
    from glossrec.config import load_config
    from glossrec.evaluate import format_table
    from glossrec.pipeline import run as run_pipeline

    show_progress_logs()
    cfg = load_config(config, with_sets({"data.path": str(data.expanduser().resolve()) if data else None,
                                         "train.max_steps": max_steps, "evaluate.users": users}, set_))
    results = run_pipeline(cfg, out, force=force, baselines=not no_baselines)
    if json_out:
        print_json({k: v.metrics for k, v in results.items()})
        return
    run_dir = out or cfg.out
    typer.echo("")
    typer.echo(format_table({k: v.metrics for k, v in results.items()}))
    typer.echo(f"\nsame {len(next(iter(results.values())).user_ids)} users for every row; "
               f"report: {run_dir}/report.md, report.png")
