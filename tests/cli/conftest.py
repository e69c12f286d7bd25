"""Shared by the CLI tests: run `glossrec ARGS` in this process."""

from __future__ import annotations

from pathlib import Path

from ..conftest import cli  # noqa: F401  (re-exported for the tests of this folder)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "beauty-sample"
