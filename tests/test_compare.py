"""glossrec compare: shared users, known means and significance, Holm, TREC export read by ranx."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glossrec.compare import compare, holm, read_run, shared_users, write_trec
from glossrec.config import EvalConfig, RunConfig
from glossrec.errors import DataError
from glossrec.evaluate import evaluate, write_run

ITEMS = [f"i{j}" for j in range(30)]


def _write(folder: Path, rows: list[tuple[str, str, list[str]]]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "rankings.jsonl", "w") as f:
        for u, target, items in rows:
            f.write(json.dumps({"user_id": u, "target": target, "items": items, "scores": []}) + "\n")
    return folder


def test_known_answer(tmp_path: Path) -> None:
    users = [f"u{n:02d}" for n in range(40)]
    # base: the target at rank 1 for the first 4 users only; good: for all 40 but at rank 2;
    # same: exactly base's lists.
    base = _write(tmp_path / "base", [(u, "i0", ["i0", "i1"] if n < 4 else ["i1", "i2"]) for n, u in enumerate(users)])
    good = _write(tmp_path / "good", [(u, "i0", ["i3", "i0"]) for u in users])
    same = _write(tmp_path / "same", [(u, "i0", ["i0", "i1"] if n < 4 else ["i1", "i2"]) for n, u in enumerate(users)])
    res = compare([read_run(base), read_run(good), read_run(same)], metrics=["recall@5", "ndcg@5"])
    assert res.users == 40 and res.baseline == "base"
    assert res.means["base"]["recall@5"] == pytest.approx(0.1)
    assert res.means["good"]["recall@5"] == pytest.approx(1.0)
    assert res.means["good"]["ndcg@5"] == pytest.approx(1 / np.log2(3))
    assert res.significant("good", "recall@5") and res.significant("good", "ndcg@5")
    assert not res.significant("same", "recall@5")
    assert res.p_adjusted["same"]["recall@5"] == 1.0
    # paired bootstrap CI of the difference: 36 of 40 users gain 1 in recall, 4 gain 0
    lo, hi = res.diff_ci95["good"]["recall@5"]
    assert 0.75 < lo < 0.9 < hi <= 1.0
    assert res.diff_ci95["same"]["recall@5"] == (0.0, 0.0)
    assert "+*" in res.table() and "+0.9000 [" in res.table()
    assert res.as_dict()["diff_ci95"]["good"]["recall@5"] == [lo, hi]


def test_means_equal_glossrec_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 200
    targets = rng.integers(0, 30, n)
    ranked = np.stack([rng.permutation(30)[:10] for _ in range(n)])
    cfg = EvalConfig(cutoffs=[5, 10])
    ev = evaluate([f"u{i}" for i in range(n)], targets, ranked, np.zeros(ranked.shape),
                  np.full(n, 6), cfg)
    write_run(tmp_path / "a", ev, ITEMS, RunConfig())
    write_run(tmp_path / "b", ev, ITEMS, RunConfig())
    res = compare([read_run(tmp_path / "a"), read_run(tmp_path / "b")],
                  metrics=["recall@5", "ndcg@5", "recall@10", "ndcg@10"])
    for m in res.metrics:
        assert res.means["a"][m] == pytest.approx(ev.metrics["overall"][m], abs=1e-9)


def test_only_shared_users_and_same_targets(tmp_path: Path) -> None:
    a = read_run(_write(tmp_path / "a", [("u1", "i0", ["i0"]), ("u2", "i1", ["i0"])]))
    b = read_run(_write(tmp_path / "b", [("u2", "i1", ["i1"]), ("u3", "i0", ["i0"])]))
    assert shared_users([a, b]) == ["u2"]
    c = read_run(_write(tmp_path / "c", [("u2", "i5", ["i1"])]))
    with pytest.raises(DataError, match="different targets"):
        shared_users([a, c])


def test_bad_rankings_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "rankings.jsonl").write_text('{"user_id": "u", "target": "i0", "items": []}\n{"user_id": "u2", "items": []}\n')
    with pytest.raises(DataError, match=r"rankings.jsonl.*line 2.*target"):
        read_run(tmp_path / "r")
    with pytest.raises(DataError, match="not a scored run"):
        read_run(tmp_path / "nothing")


def test_holm_by_hand() -> None:
    # sorted p: .01 (x3 = .03), .02 (x2 = .04), .04 (x1 = .04, monotone)
    assert holm([0.04, 0.01, 0.02]).tolist() == pytest.approx([0.04, 0.03, 0.04])
    assert holm([float("nan")]).tolist() == [1.0]


def test_trec_export_read_back_by_ranx(tmp_path: Path) -> None:
    ranx = pytest.importorskip("ranx")
    a = read_run(_write(tmp_path / "a", [("u1", "i0", ["i2", "i0", "i1"]), ("u2", "i1", ["i1"]), ("u3", "i4", [])]))
    b = read_run(_write(tmp_path / "b", [("u1", "i0", ["i0"]), ("u2", "i1", ["i3", "i4"]), ("u3", "i4", ["i4"])]))
    write_trec(tmp_path / "trec", [a, b])
    qrels = ranx.Qrels.from_file(str(tmp_path / "trec" / "qrels.txt"), kind="trec")
    run = ranx.Run.from_file(str(tmp_path / "trec" / "a.run"), kind="trec")
    assert run.to_dict()["u1"] == {"i2": 3.0, "i0": 2.0, "i1": 1.0}  # order kept by the scores
    got = ranx.evaluate(qrels, run, ["recall@5", "ndcg@5"], make_comparable=True)
    res = compare([a, b], metrics=["recall@5", "ndcg@5"])
    assert got["recall@5"] == pytest.approx(res.means["a"]["recall@5"])
    assert got["ndcg@5"] == pytest.approx(res.means["a"]["ndcg@5"])
