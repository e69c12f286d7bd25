"""The typer application that every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="glossrec",
    help="Generative sequential recommendation with semantic search (GLoSS).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
