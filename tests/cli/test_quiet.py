"""The command line prints its answer and nothing else unless asked (-v), and less with -q.

Real subprocesses: logging handlers, warning filters, environment variables and the progress
bars of transformers & co. are process-wide, so only a fresh process shows what a user sees.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glossrec.cli.app import QUIET_ENV

from ..conftest import write_tiny_dataset

TITLES = {
    "A1": "Shea butter hand cream 3 oz",
    "A2": "Argan oil shampoo for dry hair",
    "A3": "Argan oil conditioner for dry hair",
    "A4": "Matte red lipstick long lasting",
    "A5": "Waterproof black mascara volume",
    "A6": "Gel nail polish top coat",
}
SEQUENCES = {"u1": ["A2", "A3", "A1"], "u2": ["A4", "A5", "A6"], "u3": ["A1", "A4", "A2", "A3"]}


def _dataset(folder: Path) -> Path:
    return write_tiny_dataset(folder, TITLES, SEQUENCES)


def glossrec(*args: str) -> subprocess.CompletedProcess:
    # Without the variables the CLI sets itself, so the test shows that it does set them.
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    return subprocess.run([sys.executable, "-m", "glossrec.cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.mark.slow
def test_recommend_prints_only_its_answer(tmp_path: Path) -> None:
    # A dense run: loading the embedded sentence encoder is what printed "Loading weights" bars.
    data = _dataset(tmp_path / "data")
    r = glossrec("index", "--data", str(data), "--retriever", "dense", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    args = ("recommend", "--run", str(tmp_path / "run"), "--history", "A2", "--k", "3")

    r = glossrec(*args)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines()[2].split()[:2] == ["1", "A3"]

    r = glossrec("-v", *args)
    assert r.returncode == 0
    assert f"INFO glossrec.cli: {tmp_path / 'run'}: LIS mode, {len(TITLES)} items (dense)" in r.stderr
    assert "INFO sentence_transformers" in r.stderr  # third-party records are shown with -v


def test_quiet_hides_progress_lines_and_default_keeps_them(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    # An item without a title is a counted skip that `lis` reports on stderr.
    with gzip.open(data / "items.jsonl.gz", "at", encoding="utf-8") as f:
        f.write(json.dumps({"item_id": "ZZ", "title": ""}) + "\n")
    base = ("lis", "--data", str(data), "--retriever", "bm25")
    r = glossrec(*base, "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert "LIS-bm25" in r.stdout and "ZZ" in r.stderr and "bm25s" not in r.stderr
    r = glossrec("-q", *base, "--out", str(tmp_path / "b"))
    assert r.returncode == 0 and "LIS-bm25" in r.stdout and "ZZ" not in r.stderr
    r = glossrec("-vv", *base, "--out", str(tmp_path / "c"))
    assert r.returncode == 0 and "DEBUG bm25s" in r.stderr
