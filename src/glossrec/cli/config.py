"""CLI commands: config show (the resolved config) and config reference (docs/config.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glossrec.cli.app import SetOpt, app, parse_sets

config_app = typer.Typer(help="Show the resolved configuration and the reference of its keys.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def show(
    config: Annotated[Optional[Path], typer.Argument(help="TOML config (default: the defaults).")] = None,
    set_: SetOpt = None,
) -> None:
    """Print the resolved config as TOML: defaults < CONFIG < --set."""
    from glossrec.config import config_to_toml, load_config

    typer.echo(config_to_toml(load_config(config, parse_sets(set_))), nl=False)


@config_app.command("reference")
def reference() -> None:
    """Print every key with its type, default and meaning (the text of docs/config.md)."""
    from glossrec.config import reference_markdown

    typer.echo(reference_markdown(), nl=False)
