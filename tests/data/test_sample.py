"""User sampling: reproducible bytes, item closure, verbatim lines; and the shipped sample."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from glossrec.data import load_dataset
from glossrec.data.sample import sample_dataset
from glossrec.errors import DataError
from glossrec.splits import make_splits


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def test_same_seed_same_bytes_other_seed_other_users(small_dataset: Path, tmp_path: Path) -> None:
    a = sample_dataset(small_dataset, 4, 7, tmp_path / "a")
    sample_dataset(small_dataset, 4, 7, tmp_path / "b")
    for name in ("items.jsonl.gz", "sequences.jsonl.gz", "sample.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    def users(folder: Path) -> tuple[str, ...]:
        return tuple(json.loads(x)["user_id"] for x in _lines(folder / "sequences.jsonl.gz"))

    drawn = {users(tmp_path / "a")}
    for seed in range(1, 6):
        sample_dataset(small_dataset, 4, seed, tmp_path / f"s{seed}")
        drawn.add(users(tmp_path / f"s{seed}"))
    assert len(drawn) > 1
    assert a.users == 4 and a.source_users == 8


def test_item_closure_and_verbatim_lines(small_dataset: Path, tmp_path: Path) -> None:
    r = sample_dataset(small_dataset, 3, 0, tmp_path / "s")
    src_seq = _lines(small_dataset / "sequences.jsonl.gz")
    src_items = _lines(small_dataset / "items.jsonl.gz")
    seq = _lines(tmp_path / "s" / "sequences.jsonl.gz")
    items = _lines(tmp_path / "s" / "items.jsonl.gz")
    # Verbatim, in source order.
    assert seq == [x for x in src_seq if x in seq] and len(seq) == 3
    assert items == [x for x in src_items if x in items]
    touched = {i for x in seq for i in json.loads(x)["items"]}
    assert {json.loads(x)["item_id"] for x in items} == touched
    assert r.items == len(touched) and r.source_items == 10


def test_untitled_items_are_copied_and_dropped_on_load(small_dataset: Path, tmp_path: Path) -> None:
    sample_dataset(small_dataset, 8, 0, tmp_path / "all")
    items = [json.loads(x) for x in _lines(tmp_path / "all" / "items.jsonl.gz")]
    assert {"item_id": "i3", "title": None, "categories": [["X"]]} in items
    full, sample = load_dataset(small_dataset), load_dataset(tmp_path / "all")
    assert sample.stats() == full.stats()
    assert sample.report.untitled_items == ["i3"]


def test_bad_requests_and_inputs(small_dataset: Path, tmp_path: Path, make_dataset) -> None:
    with pytest.raises(DataError, match="asked for 9 users but the file has only 8"):
        sample_dataset(small_dataset, 9, 0, tmp_path / "x")
    with pytest.raises(DataError, match="overwrite its source"):
        sample_dataset(small_dataset, 2, 0, small_dataset)
    bad = make_dataset(tmp_path / "bad", [{"item_id": "a", "title": "A"}],
                       [{"user_id": "u", "items": ["a", "zz"]}])
    with pytest.raises(DataError) as ei:
        sample_dataset(bad, 1, 0, tmp_path / "y")
    msg = str(ei.value)
    assert "sequences.jsonl" in msg and "line 1" in msg and "field 'items'" in msg and "'zz'" in msg
    assert not (tmp_path / "y").exists()
    bad2 = make_dataset(tmp_path / "bad2", '{"item_id": "a", "title": "A"}\n{oops\n',
                        [{"user_id": "u", "items": ["a"]}])
    with pytest.raises(DataError, match=r"items.jsonl, line 2: not valid JSON"):
        sample_dataset(bad2, 1, 0, tmp_path / "z")


# ---- the shipped sample ----

SAMPLE_CMD = dict(n_users=2000, seed=0)


def test_shipped_sample_loads_and_is_useful(repo_root: Path) -> None:
    folder = repo_root / "data" / "beauty-sample"
    ds = load_dataset(folder)
    assert ds.stats() == {"users": 2000, "items": 7369, "interactions": 18062, "mean_length": 9.03}
    info = json.loads((folder / "sample.json").read_text())
    assert (info["users"], info["seed"]) == (2000, 0)
    splits = make_splits(ds)
    assert len(splits.test) == 2000 and len(splits.valid) == 100
    seen = {i for e in splits.train for i in (*e.history, e.target)}
    reachable = sum(e.target in seen for e in splits.test)
    assert reachable >= 300, reachable  # 1,383 when written
    assert "glossrec data sample --data ../shared/data/amazon2014/beauty --users 2000 --seed 0" \
        in (folder / "README.md").read_text()


@pytest.mark.realdata
def test_shipped_sample_matches_the_command(repo_root: Path, shared_amazon: Path,
                                            tmp_path: Path) -> None:
    sample_dataset(shared_amazon / "beauty", SAMPLE_CMD["n_users"], SAMPLE_CMD["seed"], tmp_path)
    shipped = repo_root / "data" / "beauty-sample"
    for name in ("items.jsonl.gz", "sequences.jsonl.gz"):
        # Compare content, not bytes: another zlib build may compress differently.
        assert _lines(tmp_path / name) == _lines(shipped / name), name
    made = json.loads((tmp_path / "sample.json").read_text())
    kept = json.loads((shipped / "sample.json").read_text())
    assert made["source_sha256"] == kept["source_sha256"]
