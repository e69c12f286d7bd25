"""Errors a user can act on. The CLI prints them as one line, never a traceback."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType


class GlossrecError(Exception):
    """Base class: the message alone tells the user what is wrong and where."""


class ConfigError(GlossrecError):
    pass


class DataError(GlossrecError):
    """Bad input data, located by file, line and field where they are known."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        self.path, self.line, self.field = path, line, field
        super().__init__((": ".join([", ".join(where), message])) if where else message)


def import_optional(module: str, extra: str, needed_for: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency, or a ConfigError naming the ``glossrec[extra]`` that brings it.

    module: what to import ("matplotlib.pyplot"); extra: the pyproject extra that installs it;
    needed_for: the feature asking ("retrieve.faiss = true"); package: its name on PyPI when it
    differs from the module's ("faiss-cpu" for faiss). Only the module itself (or a parent) being
    absent becomes the ConfigError: an installed package that fails to import raises as it is.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        package = package or module.split(".")[0]
        raise ConfigError(f"{needed_for} needs {package}, which is not installed: "
                          f'pip install "glossrec[{extra}]" (or pip install {package})') from None
