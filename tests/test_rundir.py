"""The run directory's layout (glossrec.rundir): names, config round trip, errors, import rule."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from glossrec.config import load_config
from glossrec.errors import ConfigError
from glossrec.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def test_layout_names(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    assert {
        "config": rd.config, "manifest": rd.manifest, "checkpoints": rd.checkpoints,
        "adapter": rd.adapter, "train_log": rd.train_log, "index": rd.index,
        "metrics": rd.metrics, "rankings": rd.rankings, "report_md": rd.report_md,
        "report_png": rd.report_png,
    } == {
        "config": tmp_path / "config.toml", "manifest": tmp_path / "manifest.json",
        "checkpoints": tmp_path / "checkpoints", "adapter": tmp_path / "adapter",
        "train_log": tmp_path / "train_log.jsonl", "index": tmp_path / "index",
        "metrics": tmp_path / "metrics.json", "rankings": tmp_path / "rankings.jsonl",
        "report_md": tmp_path / "report.md", "report_png": tmp_path / "report.png",
    }
    assert rd.generations() == rd.generations("test") == tmp_path / "generations.jsonl"
    assert rd.generations("valid") == tmp_path / "generations.valid.jsonl"
    with pytest.raises(ConfigError, match="train"):
        rd.generations("train")
    assert rd.lis("bm25") == RunDir(tmp_path / "lis-bm25")
    assert rd.gloss("dense").metrics == tmp_path / "gloss-dense" / "metrics.json"


def test_a_str_path_is_a_path_and_the_object_is_frozen_and_path_like(tmp_path: Path) -> None:
    rd = RunDir(str(tmp_path))  # type: ignore[arg-type]
    assert isinstance(rd.path, Path) and rd == RunDir(tmp_path)
    assert os.fspath(rd) == str(tmp_path) == str(rd)
    with pytest.raises(AttributeError):
        rd.path = tmp_path / "other"  # type: ignore[misc]


def test_config_round_trip_is_atomic_and_creates_the_folder(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "new" / "run")
    assert not rd.is_run()
    cfg = load_config(None, {"evaluate.users": 7, "data.path": str(tmp_path)})
    assert rd.write_config(cfg) == rd.config
    assert rd.is_run()
    assert [p.name for p in rd.path.iterdir()] == ["config.toml"]  # no temporary left behind
    back = rd.read_config()
    assert back.evaluate.users == 7 and back.data.path == tmp_path
    assert rd.read_config({"evaluate.users": 3}).evaluate.users == 3
    assert rd.config.stat().st_mode & 0o777 == 0o644


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a run directory \(no config.toml\)$"):
        RunDir(tmp_path).read_config()
    with pytest.raises(ConfigError, match="not a run directory.*; make one with `glossrec index"):
        RunDir(tmp_path).read_config(hint="make one with `glossrec index ...`")


def test_trained_weights(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.adapter.mkdir()
    assert rd.trained_weights() is None  # an adapter/ folder alone is not a finished training
    (rd.adapter / "adapter_config.json").write_text("{}")
    assert rd.trained_weights() == tmp_path / "adapter"


def test_full_weights_are_trained_weights_too(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.adapter.mkdir()
    (rd.adapter / "config.json").write_text("{}")
    assert rd.trained_weights() is None  # a config without weights is not a model
    (rd.adapter / "model.safetensors").write_bytes(b"")
    assert rd.trained_weights() == tmp_path / "adapter"


def test_rundir_sits_below_the_stages() -> None:
    """At import, rundir needs only config, io, errors and weights, so every stage may import
    it (its live-catalog helpers import the catalog when they are called)."""
    tree = ast.parse((ROOT / "src" / "glossrec" / "rundir.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    mods = {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
    mods |= {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in mods if m.startswith("glossrec")} == {
        "glossrec.config", "glossrec.io", "glossrec.errors", "glossrec.weights"}


def test_the_layout_names_have_one_owner() -> None:
    """Outside rundir.py no module spells a run directory's file or folder name as a literal."""
    names = ['"config.toml"', '"adapter"', '"manifest.json"', '"generations.jsonl"',
             '"generations.valid.jsonl"', '"metrics.json"', '"rankings.jsonl"', '"report.md"',
             '"report.png"', '"index"']
    # Left where they are: glossrec.train still names checkpoints/ and train_log.jsonl itself, and
    # "index" also keys timing dicts ("timing_s": {"index": ...}).
    allowed = {("pipeline.py", '"index"')}
    src = ROOT / "src" / "glossrec"
    found = []
    for f in sorted(src.rglob("*.py")):
        rel = f.relative_to(src).as_posix()
        if rel == "rundir.py":
            continue
        text = f.read_text()
        found += [(rel, n) for n in names if n in text and (rel, n) not in allowed]
    assert found == []
