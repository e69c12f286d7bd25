"""The dataset comes from --data: paper configs name none, and a run remembers an absolute path."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import cli
from glossrec.config import load_config

ROOT = Path(__file__).resolve().parents[2]
PAPER = sorted((ROOT / "configs" / "paper").glob("*.toml"))
SAMPLE = ROOT / "data" / "beauty-sample"


def test_paper_configs_name_no_data_path() -> None:
    assert len(PAPER) == 9
    for path in PAPER:
        assert "shared" not in path.read_text(), path
        cfg = load_config(path)
        assert cfg.data.path is None and cfg.out is not None, path
        assert load_config(path, {"data.path": str(SAMPLE)}).data.path == SAMPLE


def test_run_without_data_is_a_one_line_error_that_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, out, err = cli(monkeypatch, capsys, "run", str(PAPER[0]), "--out", str(tmp_path / "run"))
    assert code == 2 and out == ""
    assert err == ("error: no dataset: data.path is not set; give --data DIR or set [data] path "
                   "in the config\n")
    assert not (tmp_path / "run").exists()


def test_a_relative_data_path_is_stored_absolute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # The run's config.toml is read again from the run folder (recommend, serve, generate):
    # a path relative to the working directory would point inside the run folder.
    monkeypatch.chdir(SAMPLE.parent)
    code, _, err = cli(monkeypatch, capsys, "lis", "--data", SAMPLE.name, "--retriever", "bm25",
                       "--users", "5", "--out", str(tmp_path / "lis"))
    assert code == 0, err
    assert load_config(tmp_path / "lis" / "config.toml").data.path == SAMPLE
