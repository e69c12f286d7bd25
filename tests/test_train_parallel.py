"""Data-parallel training: 2 processes (gloo, CPU) follow the 1-process loss curve at the same
global batch, only rank 0 writes, and a run whose worker is killed resumes from its checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from glossrec.train import latest_checkpoint

from .conftest import wait_for_checkpoint

HELPER_PATH = Path(__file__).parent / "train_helper.py"
_spec = importlib.util.spec_from_file_location("glossrec_train_helper_p", HELPER_PATH)
helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)  # type: ignore[union-attr]

TOLERANCE = 1e-4
"""Relative: the two processes' gradient shares are summed in another order than one process sums them."""


def _torchrun(model: Path, run: Path, sleep: float, procs: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           str(HELPER_PATH), str(model), str(run), str(sleep)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _losses(run: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return [(r["step"], k, r[k]) for r in rows for k in ("loss", "valid_loss") if k in r]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_two_processes_follow_the_one_process_curve(tiny_lm_dir: Path, tmp_path: Path) -> None:
    one = _torchrun(tiny_lm_dir, tmp_path / "one", 0.0, 1)
    assert one.wait(timeout=300) == 0, one.stderr.read().decode()[-3000:]
    two = _torchrun(tiny_lm_dir, tmp_path / "two", 0.0, 2)
    assert two.wait(timeout=300) == 0, two.stderr.read().decode()[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [(s, k) for s, k, _ in a] == [(s, k) for s, k, _ in b] and len(a) >= 10
    for (_, _, x), (_, _, y) in zip(a, b):
        assert y == pytest.approx(x, rel=TOLERANCE)
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_killing_one_worker_then_resuming(tiny_lm_dir: Path, tmp_path: Path) -> None:
    ref = _torchrun(tiny_lm_dir, tmp_path / "ref", 0.0, 2)
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-3000:]
    run = tmp_path / "killed"
    proc = _torchrun(tiny_lm_dir, run, 1.0, 2)
    try:
        wait_for_checkpoint(proc, run, 200)
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)  # one worker dies; torchrun stops the other
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run / "adapter").exists()
    killed_at = int(latest_checkpoint(run).name.split("-")[1])
    again = _torchrun(tiny_lm_dir, run, 0.0, 2)
    assert again.wait(timeout=300) == 0, again.stderr.read().decode()[-3000:]
    got, want = _losses(run), _losses(tmp_path / "ref")
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in want] and killed_at < got[-1][0]
    for (_, _, x), (_, _, y) in zip(got, want):
        assert x == pytest.approx(y, rel=TOLERANCE)
