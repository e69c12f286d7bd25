"""The shared importer machinery: the protocol's order of rules, and all-or-nothing writes."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from glossrec.data.build import Interaction, SourceItem, build_dataset, write_folder


def test_staged_files_are_all_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl.gz").write_bytes(b"old")

    def lines():
        yield "first"
        raise OSError("disk full")

    def failing(files) -> None:
        files.gz_lines("items.jsonl.gz", ["new"])
        files.gz_lines("sequences.jsonl.gz", lines())

    with pytest.raises(OSError, match="disk full"):
        write_folder(tmp_path, failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.jsonl.gz"]
    assert (tmp_path / "items.jsonl.gz").read_bytes() == b"old"

    def fill(files) -> None:
        files.gz_lines("items.jsonl.gz", ["a", "b\n"])
        files.json("r.json", {"k": 1})

    write_folder(tmp_path, fill)
    assert gzip.decompress((tmp_path / "items.jsonl.gz").read_bytes()) == b"a\nb\n"
    assert (tmp_path / "items.jsonl.gz").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.jsonl.gz", "r.json"]


def test_untitled_drop_comes_before_the_length_rule() -> None:
    rows = [Interaction("u", i, t, (i, t)) for t, i in enumerate(["a", "x", "b", "c"])]
    items = {k: SourceItem(k, k.upper()) for k in "abc"} | {"x": SourceItem("x", "  ")}
    built = build_dataset(rows, items, min_items=4)
    assert built.sequences == [] and built.report.short_users == 1
    built = build_dataset(rows, items, min_items=3)
    assert built.sequences == [("u", ["a", "b", "c"])]
    assert built.report.untitled_items == ["x"] and built.report.no_metadata_items == []
