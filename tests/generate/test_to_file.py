from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glossrec.errors import DataError
from glossrec.generate import generate_to_file, read_generations


class FakeGenerator:
    """Deterministic texts from the prompt; records every batch it was asked for."""

    def __init__(self, k: int = 5) -> None:
        self.k = k
        self.batches: list[list[str]] = []

    def generate(self, prompts: list[str]) -> list[list[str]]:
        self.batches.append(list(prompts))
        return [[f"Title: {p} #{j}" for j in range(self.k)] for p in prompts]


def _items(n: int) -> list[tuple[str, str]]:
    # Prompt lengths deliberately not in user order.
    return [(f"u{i:03d}", "p" * ((i * 7) % 11 + 1) + str(i)) for i in range(n)]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _expected(items: list[tuple[str, str]]) -> list[dict]:
    return [{"user_id": u, "texts": [f"Title: {p} #{j}" for j in range(5)]} for u, p in items]


def test_writes_every_user_once_in_input_order(tmp_path: Path) -> None:
    items = _items(10)
    gen = FakeGenerator()
    out = generate_to_file(gen, items, tmp_path / "g.jsonl", batch_size=3, show_progress=False)
    assert _rows(out) == _expected(items)
    assert [len(b) for b in gen.batches] == [3, 3, 3, 1]
    # Batches group similar prompt lengths (shortest first).
    flat = [len(p) for b in gen.batches for p in b]
    assert flat == sorted(flat)
    assert read_generations(out) == {r["user_id"]: r["texts"] for r in _expected(items)}


def test_restart_skips_done_users_and_repairs_a_torn_line(tmp_path: Path) -> None:
    items = _items(6)
    path = tmp_path / "g.jsonl"
    exp = _expected(items)
    path.write_text(json.dumps(exp[4]) + "\n" + json.dumps(exp[1]) + "\n"
                    + '{"user_id": "u002", "tex', encoding="utf-8")
    gen = FakeGenerator()
    generate_to_file(gen, items, path, batch_size=10, show_progress=False)
    assert sorted(p for b in gen.batches for p in b) == sorted(p for u, p in items
                                                               if u not in ("u004", "u001"))
    assert _rows(path) == exp
    # A second run has nothing left to do.
    gen2 = FakeGenerator()
    generate_to_file(gen2, items, path, batch_size=10, show_progress=False)
    assert gen2.batches == [] and _rows(path) == exp


def test_torn_line_ending_in_newline_is_cut_too(tmp_path: Path) -> None:
    items = _items(3)
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps(_expected(items)[0]) + "\n" + '{"user_id": "u0\n', encoding="utf-8")
    generate_to_file(FakeGenerator(), items, path, batch_size=2, show_progress=False)
    assert _rows(path) == _expected(items)


def test_corrupt_middle_line_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text('{"user_id": "u000", "texts": []}\nnot json\n{"user_id": "u001", "texts": []}\n')
    with pytest.raises(DataError, match="line 2"):
        generate_to_file(FakeGenerator(), _items(3), path, batch_size=2, show_progress=False)


def test_duplicate_users_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="u1"):
        generate_to_file(FakeGenerator(), [("u1", "a"), ("u1", "b")], tmp_path / "g.jsonl", 2,
                         show_progress=False)


_WORKER = """
import sys, time
from pathlib import Path
from glossrec.generate import generate_to_file

class Slow:
    def generate(self, prompts):
        time.sleep(0.05)
        return [[f"Title: {p} #{j}" for j in range(5)] for p in prompts]

items = [(f"u{i:03d}", "p" * ((i * 7) % 11 + 1) + str(i)) for i in range(int(sys.argv[2]))]
generate_to_file(Slow(), items, Path(sys.argv[1]), batch_size=2, show_progress=False)
"""


def test_killed_subprocess_resumes_without_duplicates_or_losses(tmp_path: Path) -> None:
    n = 200
    path = tmp_path / "g.jsonl"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(n)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().count("\n") >= 10:
                break
            if proc.poll() is not None:
                pytest.fail("worker finished before it could be killed")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    written = path.read_text().count("\n")
    assert 10 <= written < n
    with open(path, "a") as f:                 # and a torn line, as a kill mid-write leaves
        f.write('{"user_id": "u1')
    gen = FakeGenerator()
    generate_to_file(gen, _items(n), path, batch_size=16, show_progress=False)
    assert sum(len(b) for b in gen.batches) == n - written   # only the missing users
    assert _rows(path) == _expected(_items(n))
