"""CLI command: generate (a run directory's users -> generations.jsonl, resumable)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from glossrec.cli.app import SetOpt, app, parse_sets, show_progress_logs


def generations_path(run_dir: Path, split: str) -> Path:
    """Where a split's texts go: test -> generations.jsonl, valid -> generations.valid.jsonl."""
    from glossrec.rundir import RunDir

    return RunDir(run_dir).generations(split)


def generate_run(run_dir: Path, split: Literal["test", "valid"] | None = None, users: int | None = None,
                 batch_size: int | None = None, overwrite: bool = False,
                 show_progress: bool = True, workers: int | None = None,
                 overrides: dict[str, Any] | None = None) -> Path:
    """Generate for a run directory: its config.toml, dataset and trained weights (its own
    adapter/, else model.weights: glossrec.weights' precedence rule).

    Users: --users N, else generate.max_users, else evaluate.users (so `evaluate` finds the
    same reproducible sample, drawn with evaluate.user_seed), else all users of the split.
    """
    from glossrec.generate import generate_examples
    from glossrec.rundir import RunDir
    from glossrec.splits import prepare

    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    cfg = rd.read_config({"generate.batch_size": batch_size, "generate.workers": workers,
                          **(overrides or {})},
                         hint="make one with `glossrec train` or `glossrec run`")
    split = split or cfg.evaluate.split
    prep = prepare(cfg, split=split, users=users, where=rd.config)
    ds, examples = prep.dataset, prep.examples
    weights = rd.weights(cfg)  # the one precedence rule: the run's own, then model.weights
    if weights is None:
        print(f"note: {run_dir} has no trained weights ({rd.adapter.name}/ or model.weights); "
              f"generating with the base model {cfg.model.name}", file=sys.stderr)
    out = rd.generations(split)
    t0 = time.perf_counter()
    generate_examples(cfg, examples, ds.catalog, weights, out, overwrite=overwrite,
                      extra_meta={"split": split, "dataset": str(cfg.data.path)},
                      show_progress=show_progress, prior_table_file=rd.prior_table)
    print(f"{len(examples)} users ({split}) in {out} [{time.perf_counter() - t0:.1f}s]",
          file=sys.stderr)
    return out


@app.command()
def generate(
    run: Annotated[Path, typer.Option("--run", help="Run directory (config.toml, adapter/).")],
    split: Annotated[Optional[str], typer.Option("--split", help="test or valid (default: evaluate.split).")] = None,
    users: Annotated[Optional[int], typer.Option("--users", min=1, help="A reproducible random sample of N users (evaluate.user_seed).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Prompts per beam-search batch (default: generate.batch_size).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over instead of resuming.")] = False,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="N model replicas on Ray (local, or the cluster in RAY_ADDRESS), fed blocks of users; needs glossrec[ray] (default: generate.workers).")] = None,
    set_: SetOpt = None,
) -> None:
    """Beam-search next-item texts for a split's users into RUN/generations.jsonl (resumable)."""
    from glossrec.errors import ConfigError
    from glossrec.rundir import GENERATIONS

    show_progress_logs()
    if split is not None and split not in GENERATIONS:
        raise ConfigError(f"--split must be test or valid, got {split!r}")
    out = generate_run(run, split, users, batch_size, overwrite,  # type: ignore[arg-type]
                       workers=workers, overrides=parse_sets(set_))
    typer.echo(str(out))
