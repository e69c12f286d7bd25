"""Errors a user can act on. The CLI prints them as one line, never a traceback."""

from __future__ import annotations

from pathlib import Path


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
