"""`glossrec baseline`, `hybrid` and `compare` from the command line, on the shipped sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import cli

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "beauty-sample"


def test_baseline_hybrid_compare_and_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    code, out, err = cli(monkeypatch, capsys, "-q", "baseline", "itemknn", "--data", str(SAMPLE),
                         "--out", str(tmp_path / "knn"), "--json")
    assert code == 0, err
    knn = json.loads(out)["itemknn"]["overall"]
    assert knn["users"] == 2000 and (tmp_path / "knn" / "baseline" / "item_ids.json").is_file()
    code, out, err = cli(monkeypatch, capsys, "-q", "lis", "--data", str(SAMPLE), "--retriever", "bm25",
                         "--out", str(tmp_path / "lis"), "--json")
    assert code == 0, err
    code, out, err = cli(monkeypatch, capsys, "-q", "hybrid", "--data", str(SAMPLE), "--retriever", "bm25",
                         "--model", str(tmp_path / "knn"), "--out", str(tmp_path / "hyb"), "--json",
                         "--set", "hybrid.weight_grid=[0.0, 1.0]")
    assert code == 0, err
    metrics = json.loads((tmp_path / "hyb" / "metrics.json").read_text())
    assert set(metrics["weights"]) == {"lis", "itemknn"} and metrics["tuned"]["valid_users"] > 0
    code, out, err = cli(monkeypatch, capsys, "compare", str(tmp_path / "lis"), str(tmp_path / "knn"),
                         str(tmp_path / "hyb"), "--json", "--trec", str(tmp_path / "trec"))
    assert code == 0, err
    res = json.loads(out)
    assert res["users"] == 2000 and res["baseline"] == "lis" and res["correction"] == "holm"
    assert set(res["p_adjusted"]) == {"knn", "hyb"}
    assert sorted(p.name for p in (tmp_path / "trec").iterdir()) == ["hyb.run", "knn.run", "lis.run", "qrels.txt"]
    # The hybrid run is servable: its config names the model it fuses.
    code, out, err = cli(monkeypatch, capsys, "recommend", "--run", str(tmp_path / "hyb"),
                         "--history", "B004756YJA", "--k", "5", "--json")
    assert code == 0, err
    assert len(json.loads(out)["items"]) == 5


def test_bad_baseline_and_compare_input_are_one_line_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = cli(monkeypatch, capsys, "baseline", "bert4rec", "--data", str(SAMPLE), "--out", str(tmp_path / "x"))
    assert code == 2 and "unknown baseline 'bert4rec'" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(monkeypatch, capsys, "compare", str(tmp_path), str(tmp_path))
    assert code == 2 and "rankings.jsonl" in err


def test_hybrid_scores_the_texts_given_for_the_evaluated_split(tmp_path: Path, monkeypatch, capsys) -> None:
    """--generations holds the evaluated users' texts, validation users' too; a fusion that
    gives the LM a share with no texts for them is an error, not LIS alone."""
    from glossrec.config import RunConfig
    from glossrec.io import write_jsonl
    from glossrec.pipeline import prepare

    cfg = RunConfig().updated(data={"path": SAMPLE}, evaluate={"split": "valid"})
    prep = prepare(cfg)
    cat = prep.dataset.catalog
    gens = tmp_path / "valid.jsonl"  # a perfect LM: the target's own title
    write_jsonl(gens, ({"user_id": e.user_id, "texts": [cat.text(e.target)]} for e in prep.examples))
    args = ["-q", "hybrid", "--data", str(SAMPLE), "--retriever", "bm25", "--exclude-history",
            "--set", "evaluate.split=valid", "--set", "hybrid.fusion=interleave",
            "--set", "hybrid.slots={lis = 1, gloss = 1}", "--json"]
    code, out, err = cli(monkeypatch, capsys, *args, "--out", str(tmp_path / "hyb"), "--generations", str(gens))
    assert code == 0, err
    metrics = json.loads((tmp_path / "hyb" / "metrics.json").read_text())
    assert metrics["components"] == ["lis", "gloss"]
    # the LM's item at place 2 (LIS alone finds a few percent; items with a twin title miss)
    assert json.loads(out)["hybrid"]["overall"]["recall@5"] > 0.9
    code, _, err = cli(monkeypatch, capsys, *args, "--out", str(tmp_path / "hyb2"))
    assert code != 0 and "no" in err and "--generations" in err
