"""CLI command: models (the models glossrec ships, and which are in this install)."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from glossrec.cli.app import app


@app.command("models")
def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per model, a "
                                          "line each.")] = False,
) -> None:
    """List the models glossrec ships: their weights in this install or retired (with the
    commit that holds them), examples trained on, training hours, and what each is. Use one
    with model.weights = NAME (or `glossrec serve --model NAME`)."""
    from glossrec.weights import retired_checkout, shipped_models

    models = shipped_models()
    if as_json:
        for m in models:
            typer.echo(json.dumps({**dataclasses.asdict(m), "folder": str(m.folder)}))
        return
    rows = [("name", "weights", "examples", "hours", "what it is")]
    for m in models:
        weights = "here" if m.in_package else f"retired ({(m.retired_commit or '?')[:7]})"
        rows.append((m.name, weights, "" if m.examples is None else f"{m.examples:,}",
                     "" if m.train_hours is None else f"{m.train_hours:.1f}", m.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        typer.echo("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]),
                              r[2].rjust(widths[2]), r[3].rjust(widths[3]), r[4]]).rstrip())
    typer.echo(f"\nhours: training on 2 CPU cores, the lineage's whole chain. A retired model's "
               f"weights: `{retired_checkout('NAME', 'COMMIT')}` in a clone of the glossrec "
               f"repository.")
