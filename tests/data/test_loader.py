"""load_dataset: the GLoSS skips, and every kind of bad input named by file, line and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from glossrec.data import load_dataset
from glossrec.errors import DataError, GlossrecError

ITEMS = [{"item_id": "a", "title": "Alpha"}, {"item_id": "b", "title": "Beta"},
         {"item_id": "c", "title": "Gamma &amp; Co"}]
SEQS = [{"user_id": "u1", "items": ["a", "b", "c"]}, {"user_id": "u2", "items": ["c", "a"]}]


def _lines(objs: list[dict]) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def test_loads_plain_and_gzip_the_same(tmp_path: Path, make_dataset) -> None:
    plain = load_dataset(make_dataset(tmp_path / "p", ITEMS, SEQS))
    zipped = load_dataset(make_dataset(tmp_path / "z", ITEMS, SEQS, gzipped=True))
    for ds in (plain, zipped):
        assert ds.users == ["u1", "u2"]
        assert [ds.catalog.ids[i] for i in ds.sequences[0]] == ["a", "b", "c"]
        assert ds.catalog.text(2) == "Title: Gamma &amp; Co"  # entities stay as in the source
    assert ds.stats() == {"users": 1, "items": 3, "interactions": 3, "mean_length": 3.0}


@pytest.mark.parametrize("title", [None, "", "   \t"])
def test_untitled_items_are_a_counted_skip(tmp_path: Path, make_dataset, title) -> None:
    items = ITEMS + [{"item_id": "d", "title": title}, {"item_id": "e"}]
    seqs = SEQS + [{"user_id": "u3", "items": ["d", "a", "e", "d"]},
                   {"user_id": "u4", "items": ["e"]}]
    ds = load_dataset(make_dataset(tmp_path, items, seqs))
    assert ds.report.untitled_items == ["d", "e"]
    assert ds.report.dropped_interactions == 4
    assert ds.report.dropped_users == ["u4"]
    assert ds.users == ["u1", "u2", "u3"]
    assert [ds.catalog.ids[i] for i in ds.sequences[2]] == ["a"]
    assert "d" not in ds.catalog
    assert any("2 items without a title" in line for line in ds.report.lines())


def _expect(folder: Path, file: str, line: int | None, fld: str | None, words: str) -> DataError:
    with pytest.raises(DataError) as ei:
        load_dataset(folder)
    e = ei.value
    msg = str(e)
    assert isinstance(e, GlossrecError)
    assert file in msg and Path(str(e.path)).name == file
    if line is not None:
        assert e.line == line and f"line {line}" in msg
    if fld is not None:
        assert e.field == fld and f"field '{fld}'" in msg
    assert words in msg
    return e


BAD_CASES = {
    # name: (items text, sequences text, file, line, field, words)
    "bad json line": (_lines(ITEMS[:1]) + '{"item_id": "b", "title": }\n', _lines(SEQS),
                      "items.jsonl", 2, None, "not valid JSON"),
    "not an object": (_lines(ITEMS), _lines(SEQS[:1]) + '["u2", ["a"]]\n',
                      "sequences.jsonl", 2, None, "expected a JSON object"),
    "unknown item in a sequence": (_lines(ITEMS), _lines(SEQS + [{"user_id": "u3", "items": ["a", "zz"]}]),
                                   "sequences.jsonl", 3, "items", "unknown item id 'zz' at position 1"),
    "duplicate item id": (_lines(ITEMS + [{"item_id": "b", "title": "Again"}]), _lines(SEQS),
                          "items.jsonl", 4, "item_id", "duplicate item_id 'b' (first on line 2)"),
    "duplicate untitled item id": (_lines(ITEMS + [{"item_id": "d", "title": None}] * 2), _lines(SEQS),
                                   "items.jsonl", 5, "item_id", "first on line 4"),
    "duplicate user id": (_lines(ITEMS), _lines(SEQS + [SEQS[0]]),
                          "sequences.jsonl", 3, "user_id", "duplicate user_id 'u1'"),
    "empty items file": ("", _lines(SEQS), "items.jsonl", None, None, "empty file"),
    "empty sequences file": (_lines(ITEMS), "\n", "sequences.jsonl", None, None, "empty file"),
    "missing item_id": (_lines(ITEMS) + '{"title": "No id"}\n', _lines(SEQS),
                        "items.jsonl", 4, "item_id", "missing"),
    "missing user_id": (_lines(ITEMS), _lines(SEQS) + '{"items": ["a"]}\n',
                        "sequences.jsonl", 3, "user_id", "missing"),
    "missing items": (_lines(ITEMS), _lines(SEQS) + '{"user_id": "u9"}\n',
                      "sequences.jsonl", 3, "items", "missing"),
    "title wrong type": (_lines(ITEMS + [{"item_id": "d", "title": 5}]), _lines(SEQS),
                         "items.jsonl", 4, "title", "must be a string or null, got int"),
    "item_id wrong type": (_lines([{"item_id": 7, "title": "x"}] + ITEMS), _lines(SEQS),
                           "items.jsonl", 1, "item_id", "non-empty string"),
    "user_id wrong type": (_lines(ITEMS), _lines([{"user_id": 1, "items": ["a"]}]),
                           "sequences.jsonl", 1, "user_id", "non-empty string"),
    "items not a list": (_lines(ITEMS), _lines([{"user_id": "u", "items": "a b"}]),
                         "sequences.jsonl", 1, "items", "must be a list"),
    "item id not a string": (_lines(ITEMS), _lines([{"user_id": "u", "items": ["a", 3]}]),
                             "sequences.jsonl", 1, "items", "got int 3 at position 1"),
    "no titled item": (_lines([{"item_id": "a", "title": None}]), _lines(SEQS[:0]) + "\n",
                       "items.jsonl", None, None, "no item has a title"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_line_field(tmp_path: Path, make_dataset, case: str) -> None:
    items, seqs, file, line, fld, words = BAD_CASES[case]
    _expect(make_dataset(tmp_path, items, seqs), file, line, fld, words)


def test_truncated_gzip_names_file_and_line(tmp_path: Path, make_dataset) -> None:
    items = [{"item_id": f"i{k}", "title": f"title {k} " * 20} for k in range(300)]
    folder = make_dataset(tmp_path, items, [{"user_id": "u", "items": ["i1"]}], gzipped=True)
    f = folder / "items.jsonl.gz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    e = _expect(folder, "items.jsonl.gz", None, None, "truncated or corrupt file")
    assert "line" in str(e)


def test_not_gzip_at_all(tmp_path: Path, make_dataset) -> None:
    folder = make_dataset(tmp_path, ITEMS, SEQS)
    (folder / "items.jsonl").unlink()
    (folder / "items.jsonl.gz").write_bytes(b"this is not gzip\n")
    _expect(folder, "items.jsonl.gz", None, None, "corrupt")


def test_missing_folder_and_file(tmp_path: Path, make_dataset) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset(tmp_path / "nope")
    folder = make_dataset(tmp_path / "d", ITEMS, SEQS)
    (folder / "sequences.jsonl").unlink()
    with pytest.raises(DataError, match="no sequences.jsonl or sequences.jsonl.gz"):
        load_dataset(folder)


def test_gz_preferred_over_plain(tmp_path: Path, make_dataset) -> None:
    folder = make_dataset(tmp_path, ITEMS, SEQS, gzipped=True)
    (folder / "items.jsonl").write_text("garbage\n")
    with gzip.open(folder / "items.jsonl.gz", "rt") as f:
        assert f.readline()
    assert len(load_dataset(folder).catalog) == 3
