"""The HTTP contract: Schemathesis runs every check, the stateful phase included, against a live
`glossrec serve` built from /openapi.json alone, and finds nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import running

pytest.importorskip("schemathesis")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_schemathesis_finds_no_failure(bm25_run: Path, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    with running(bm25_run) as srv:
        proc = subprocess.run(
            [exe, "--config-file", str(ROOT / "schemathesis.toml"), "run", f"{srv.url}/openapi.json",
             "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", "20",
             "--seed", "1", "--workers", "1", "--no-color"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
