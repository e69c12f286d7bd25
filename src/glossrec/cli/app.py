"""The typer application that every command module registers on, and what the CLI prints.

Output policy (set once, by the root callback, before any command runs):

- stdout carries a command's answer; stderr carries glossrec's own messages (errors, notes,
  progress of long commands), nothing else by default.
- Third-party noise (transformers / huggingface_hub / sentence-transformers progress bars such as
  "Loading weights", their log warnings, and FutureWarning / DeprecationWarning from any
  library) is silenced, so ``glossrec recommend ...`` prints only its answer.
- ``-v`` shows all of it, with glossrec's log records at INFO (``-vv``: DEBUG), each prefixed by
  level and logger; ``-q`` also hides glossrec's own log lines and warnings (progress of train,
  run, generate, lis), leaving the answer and errors.

Only the CLI does this: importing glossrec as a library changes no logging or warning setting.
"""

from __future__ import annotations

import logging
import os
import sys
import tomllib
import warnings
from collections.abc import Sequence
from typing import Annotated, Any, Optional

import typer

from glossrec.errors import ConfigError

app = typer.Typer(
    name="glossrec",
    help="Generative sequential recommendation with semantic search (GLoSS).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: rich markup would eat "[sasrec]"-style text and its tables cut option
    # names at 80 columns.
    rich_markup_mode=None,
)

THIRD_PARTY = ("transformers", "huggingface_hub", "sentence_transformers", "peft", "accelerate",
               "torch", "bm25s", "faiss", "urllib3", "httpx", "filelock", "ray", "bitsandbytes",
               "kernels", "ranx", "numba")
"""Loggers (and warning-issuing modules) of libraries glossrec drives."""
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # hub downloads, and transformers' bars ("Loading weights")
    "TRANSFORMERS_VERBOSITY": "error",  # read when transformers is first imported
    "HF_HUB_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    # Child processes (Ray's actors, train --processes) do not inherit the filters set below.
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}

_state = {"verbosity": 0}
_env_set: dict[str, str] = {}
_handler: logging.Handler | None = None


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the current sys.stderr (which tests and redirections replace)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass


def setup_output(verbosity: int) -> None:
    """Logging levels, warning filters and third-party progress bars for one CLI invocation.

    verbosity: -1 (-q), 0 (default), 1 (-v), 2 (-vv). Idempotent: a second call (in-process
    tests) replaces the first one's settings instead of stacking handlers.
    """
    global _handler
    _state["verbosity"] = verbosity
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter(
        "%(levelname)s %(name)s: %(message)s" if verbosity > 0 else "%(message)s"))
    _handler.addFilter(_shown)
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO if verbosity > 0 else logging.WARNING)
    glossrec_level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.getLogger("glossrec").setLevel(glossrec_level)

    if verbosity > 0:
        for name, value in list(_env_set.items()):  # undo an earlier quiet call (same process)
            if os.environ.get(name) == value:
                del os.environ[name]
            del _env_set[name]
        for name in THIRD_PARTY:
            logging.getLogger(name).setLevel(logging.NOTSET)
        _third_party_bars(enable=True)
        return
    for name, value in QUIET_ENV.items():  # a value the user set is kept
        if name not in os.environ:
            os.environ[name] = _env_set[name] = value
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.ERROR)
    _third_party_bars(enable=False)
    if not sys.warnoptions:  # python -W / PYTHONWARNINGS: the user's choice stands
        # Warnings a user of the command line cannot act on (they are addressed to developers).
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"(%s)(\.|$)" % "|".join(THIRD_PARTY))


def _shown(record: logging.LogRecord) -> bool:
    """glossrec's records are filtered by its logger's level; the others here, because some
    libraries set their own logger's level at import (bm25s: DEBUG), after this setup ran."""
    name = record.name
    if name == "glossrec" or name.startswith("glossrec."):
        return True
    verbosity = _state["verbosity"]
    if verbosity > 1:
        return True
    if verbosity == 1:
        return record.levelno >= logging.INFO
    third_party = name.split(".", 1)[0] in THIRD_PARTY
    return record.levelno >= (logging.ERROR if third_party else logging.WARNING)


def _third_party_bars(enable: bool) -> None:
    """Libraries already imported read no environment again: tell them directly."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        (tf_logging.enable_progress_bar if enable else tf_logging.disable_progress_bar)()
        tf_logging.set_verbosity(logging.WARNING if enable else logging.ERROR)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if enable else disable_progress_bars)()


def show_progress_logs() -> None:
    """For long commands (train, run, generate): glossrec's INFO progress on stderr unless -q."""
    if _state["verbosity"] == 0:
        logging.getLogger("glossrec").setLevel(logging.INFO)


@app.command()
def version() -> None:
    """Print the glossrec version."""
    from glossrec import __version__

    typer.echo(__version__)


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="Show log records (INFO; -vv: DEBUG) and the progress "
                                         "bars and warnings of transformers & co.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Hide glossrec's log lines and "
                                        "warnings too (progress of train, run, lis...).")] = False,
) -> None:
    """Generative sequential recommendation with semantic search (GLoSS)."""
    setup_output(-1 if quiet and not verbose else verbose)


# ---- config overrides shared by every command that takes a config ---------------------------

SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="SECTION.KEY=VALUE",
    help="Override one config key, e.g. --set train.max_steps=10 --set generate.constrain=catalog "
    "(repeatable; applied last). The value is read as TOML (10, 1e-4, true, \"text\", [5, 10]); "
    "a bare word is a string.")]
JsonOutOpt = Annotated[bool, typer.Option("--json", help="Print the metrics as JSON instead of a table.")]


def parse_sets(values: Sequence[str] | None) -> dict[str, Any]:
    """``--set section.key=value`` options -> :func:`glossrec.config.load_config`'s dotted overrides.

    A value is a TOML scalar (or array) when it reads as one and fits the key's type, else the
    text as typed (so ``catalog`` and ``meta-llama/Llama-3.2-1B`` need no quotes). Paths are
    made absolute (a run's config.toml is read again from its own folder). An unknown key or a
    value of the wrong type is a one-line ConfigError naming the key; checks that involve other
    keys (num_return <= num_beams) are load_config's.
    """
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set train.max_steps=10")
        out[key] = _set_value(key, raw, _config_field(key))
    return out


def _config_field(key: str) -> Any:
    """The pydantic field a dotted config key names, or a ConfigError naming the key."""
    from difflib import get_close_matches

    from pydantic import BaseModel

    from glossrec.config import RunConfig

    def is_section(f: Any) -> bool:
        return isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)

    fields = RunConfig.model_fields
    known = [f"{s}.{k}" for s, f in fields.items() if is_section(f) for k in f.annotation.model_fields]
    known += [s for s, f in fields.items() if not is_section(f)]
    parts = key.split(".")
    field = None
    if len(parts) == 2 and parts[0] in fields and is_section(fields[parts[0]]):
        field = fields[parts[0]].annotation.model_fields.get(parts[1])
    elif len(parts) == 1 and parts[0] in fields and not is_section(fields[parts[0]]):
        field = fields[parts[0]]
    if field is None:
        close = get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; keys are SECTION.KEY, e.g. train.max_steps"
        raise ConfigError(f"--set {key}: unknown config key{hint}")
    return field


def _set_value(key: str, raw: str, field: Any) -> Any:
    from pathlib import Path
    from typing import Annotated as _Annotated

    from pydantic import TypeAdapter, ValidationError

    candidates: list[Any] = []
    try:
        candidates.append(tomllib.loads(f"v = {raw}")["v"])
    except tomllib.TOMLDecodeError:
        pass
    candidates.append(raw)  # the text as typed: a bare word, or a str key given a number
    ann = field.annotation
    adapter = TypeAdapter(_Annotated[(ann, *field.metadata)] if field.metadata else ann)
    first_error = None
    for value in candidates:
        try:
            checked = adapter.validate_python(value)
        except ValidationError as e:
            first_error = first_error or e.errors()[0]["msg"]
            continue
        if isinstance(checked, Path):
            return str(checked.expanduser().resolve())
        return value
    raise ConfigError(f"--set {key}={raw}: {first_error}")


def print_json(obj: Any) -> None:
    """A command's answer as JSON on stdout (--json)."""
    import json

    typer.echo(json.dumps(obj, ensure_ascii=False, indent=1))


def with_sets(overrides: dict[str, Any], sets: Sequence[str] | None) -> dict[str, Any]:
    """A command's own overrides, then its --set options (the latter win)."""
    return {**overrides, **parse_sets(sets)}
