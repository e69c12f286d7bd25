"""`glossrec index / recommend / items` in-process, as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


from ..conftest import cli
from .conftest import TITLES, write_dataset


@pytest.fixture()
def run_dir(tmp_path: Path, monkeypatch, capsys) -> Path:
    data = write_dataset(tmp_path / "data")
    code, out, err = cli(monkeypatch, capsys, "index", "--data", str(data), "--retriever", "bm25",
                         "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert f"indexed {len(TITLES)} items" in out
    return tmp_path / "run"


def test_recommend_table_and_json(run_dir: Path, monkeypatch, capsys) -> None:
    code, out, err = cli(monkeypatch, capsys, "recommend", "--run", str(run_dir), "--history", "A9", "A2", "--k", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["rank", "item", "id", "score"]
    assert lines[2].split()[:2] == ["1", "A3"] and "Argan oil conditioner" in lines[2]
    assert "LIS mode" in out and "Title: Argan oil shampoo for dry hair" in out
    code, out, _ = cli(monkeypatch, capsys, "recommend", "--run", str(run_dir), "--title", "red lipstick",
                       "--k", "1", "--json")
    body = json.loads(out)
    assert code == 0 and body["items"][0]["item_id"] == "A4" and body["queries"] == ["Title: red lipstick"]
    code, out, _ = cli(monkeypatch, capsys, "recommend", "--run", str(run_dir), "-H", "A2", "--keep-history",
                       "--k", "1", "--json")
    assert json.loads(out)["items"][0]["item_id"] == "A2"


def test_items_add_show_remove(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    r = str(run_dir)
    code, out, err = cli(monkeypatch, capsys, "items", "add", "--run", r, "--id", "N1",
                         "--title", "Jade face roller", "--attr", "brand=Acme")
    assert code == 0 and "added 1" in out, err
    code, out, _ = cli(monkeypatch, capsys, "items", "show", "--run", r, "N1", "--json")
    assert json.loads(out) == {"item_id": "N1", "title": "Jade face roller", "brand": "Acme",
                               "text": "Title: Jade face roller"}
    f = tmp_path / "more.jsonl"
    f.write_text('{"item_id": "N2", "title": "Gua sha stone"}\n{"item_id": "A1", "title": "Hand cream XL"}\n')
    code, out, _ = cli(monkeypatch, capsys, "items", "add", "--run", r, "--file", str(f))
    assert code == 0 and "added 1, replaced 1" in out
    code, out, _ = cli(monkeypatch, capsys, "recommend", "--run", r, "--title", "jade roller", "--k", "1", "--json")
    assert json.loads(out)["items"][0]["item_id"] == "N1"
    code, out, _ = cli(monkeypatch, capsys, "items", "remove", "--run", r, "N1", "N2")
    assert code == 0 and "removed 2" in out
    code, _, err = cli(monkeypatch, capsys, "items", "show", "--run", r, "N1")
    assert code == 2 and "unknown item id" in err and "N1" in err


def test_user_errors_are_one_line(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    r = str(run_dir)
    cases = [
        (("recommend", "--run", r, "--history", "NOPE", "A1"), "unknown item ids: 'NOPE'"),
        (("recommend", "--run", r), "no history"),
        (("items", "remove", "--run", r, "A1", "GONE"), "'GONE'"),
        (("items", "add", "--run", r, "--id", "X"), "both --id and --title"),
        (("items", "add", "--run", r, "--id", "X", "--title", "t", "--attr", "novalue"), "key=value"),
        (("recommend", "--run", str(tmp_path / "nothing"), "-H", "A1"), "not a run directory"),
        (("index", "--data", str(tmp_path / "data"), "--out", r), "already has a live catalog"),
        (("index", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r2"), "--retriever", "tfidf"), "--retriever"),
        (("recommend", "--run", r, "-H", "A1", "--mode", "fast"), "--mode"),
    ]
    for args, message in cases:
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    code, _, _ = cli(monkeypatch, capsys, "items", "show", "--run", r, "A1")
    assert code == 0  # nothing was changed by the failed commands


def test_index_set_overrides_and_bad_values(tmp_path: Path, monkeypatch, capsys) -> None:
    from glossrec.config import load_config

    data = write_dataset(tmp_path / "data")
    code, _, err = cli(monkeypatch, capsys, "index", "--data", str(data), "--out", str(tmp_path / "run"),
                       "--set", "retrieve.bm25_k1=1.2", "--set", "retrieve.serve_ranking=paper")
    assert code == 0, err
    cfg = load_config(tmp_path / "run" / "config.toml")
    assert cfg.retrieve.bm25_k1 == 1.2 and cfg.retrieve.serve_ranking == "paper"
    code, out, err = cli(monkeypatch, capsys, "index", "--data", str(data), "--out", str(tmp_path / "bad"),
                         "--set", "retrieve.serve_ranking=best")
    assert code == 2 and out == "" and not (tmp_path / "bad").exists()
    assert err == "error: --set retrieve.serve_ranking=best: Input should be 'paper', 'max' or 'rrf'\n"
