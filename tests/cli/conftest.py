"""Shared by the CLI tests: run `glossrec ARGS` in this process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from glossrec.cli import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "beauty-sample"


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `glossrec ARGS`, as typer's entry point runs it."""
    monkeypatch.setattr(sys, "argv", ["glossrec", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
