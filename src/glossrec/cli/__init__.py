"""Thin command-line layer: parse options, call the stages, print one-line errors.

Each command group lives in its own module and registers itself on :data:`app`.
"""

from __future__ import annotations

import sys

from glossrec.cli.app import app
from glossrec.errors import GlossrecError

# Importing registers the commands.
from glossrec.cli import data as _data  # noqa: F401,E402
from glossrec.cli import retrieval as _retrieval  # noqa: F401,E402
from glossrec.cli import train as _train  # noqa: F401,E402
from glossrec.cli import generate as _generate  # noqa: F401,E402
from glossrec.cli import run as _run  # noqa: F401,E402
from glossrec.cli import serve as _serve  # noqa: F401,E402
from glossrec.cli import baselines as _baselines  # noqa: F401,E402
from glossrec.cli import config as _config  # noqa: F401,E402
from glossrec.cli import models as _models  # noqa: F401,E402

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: user errors become one readable line and exit code 2."""
    try:
        app(standalone_mode=False)
    except GlossrecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # unwritable output folder, full disk...: the OS message says what
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and the like
        usage, abort = _click_errors()
        if isinstance(e, usage):
            e.show()  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        if isinstance(e, abort):
            sys.exit(1)
        raise


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage errors, aborts) of click and of the copy of click that typer >= 0.24 vendors
    (typer._click), whose exceptions are not click's."""
    import click

    usage: list[type] = [click.exceptions.ClickException]
    abort: list[type] = [click.exceptions.Abort]
    try:
        from typer._click import exceptions as vendored  # type: ignore[import-not-found]
    except ImportError:
        vendored = None
    if vendored is not None:
        usage.append(vendored.ClickException)
        if hasattr(vendored, "Abort"):
            abort.append(vendored.Abort)
    return tuple(usage), tuple(abort)
