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


@app.command()
def version() -> None:
    """Print the glossrec version."""
    from glossrec import __version__

    typer.echo(__version__)


@app.callback()
def _root() -> None:
    """Generative sequential recommendation with semantic search (GLoSS)."""
