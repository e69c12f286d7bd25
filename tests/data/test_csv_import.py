"""The generic CSV importer: configurable columns, ISO or numeric times, and bad rows."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from glossrec.data import load_dataset
from glossrec.data.csv_import import CsvColumns, import_csv, parse_time
from glossrec.errors import DataError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
COLS = CsvColumns(user="customer", item="product", time="when", title="name")


def _read_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_import_with_custom_columns(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    report = import_csv(FIXTURES / "interactions.csv", FIXTURES / "items.csv", out, columns=COLS)
    assert _read_gz(out / "sequences.jsonl.gz") == [
        {"user_id": "u1", "items": ["p1", "p3", "p2"]},  # tie at 3000 keeps file order; dup dropped
        {"user_id": "u2", "items": ["p1", "p2", "p3"]},  # ISO dates; untitled p4 dropped
    ]
    assert _read_gz(out / "items.jsonl.gz") == [
        {"item_id": "p1", "title": "Blue Widget, large", "brand": "Acme", "color": "blue"},
        {"item_id": "p2", "title": "Red Gadget", "color": "red"},
        {"item_id": "p3", "title": 'Quoted "Thing"', "brand": "Bolt"},
    ]
    assert report.duplicate_rows == 1 and report.untitled_items == ["p4"]
    assert report.short_users == 1 and report.users == 2
    ds = load_dataset(out, item_format="Title: {title} | Brand: {brand}")
    assert ds.catalog.text(0) == "Title: Blue Widget, large | Brand: Acme"


def test_tsv_and_gzip_inputs(tmp_path: Path) -> None:
    inter = tmp_path / "inter.tsv.gz"
    with gzip.open(inter, "wt") as f:
        f.write("user_id\titem_id\ttimestamp\nu\ta\t3\nu\tb\t1\nu\tc\t2\n")
    items = tmp_path / "items.tsv"
    items.write_text("item_id\ttitle\na\tA\nb\tB\nc\tC\n")
    import_csv(inter, items, tmp_path / "ds")
    assert _read_gz(tmp_path / "ds" / "sequences.jsonl.gz") == [{"user_id": "u", "items": ["b", "c", "a"]}]


def test_parse_time() -> None:
    assert parse_time("1391040000") == 1391040000.0
    assert parse_time(" 12.5 ") == 12.5
    assert parse_time("1970-01-02") == 86400.0
    assert parse_time("1970-01-01T01:00:00+01:00") == 0.0
    assert parse_time("soon") is None and parse_time("nan") is None


ITEMS_OK = "item_id,title\na,Alpha\nb,Beta\nc,Gamma\n"
INTER_OK = "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n"

BAD = {
    # name: (interactions text, items text, bad file, line, field, words)
    "row missing a column": (INTER_OK + "u,a\n", ITEMS_OK, "inter", 5, "timestamp", "row has 2 fields"),
    "row with an extra field": (INTER_OK + "u,a,4,extra\n", ITEMS_OK, "inter", 5, "#4", "header only 3"),
    "non-numeric timestamp": (INTER_OK.replace("u,b,2", "u,b,yesterday"), ITEMS_OK, "inter", 3,
                              "timestamp", "must be a number"),
    "empty user": (INTER_OK + ",a,4\n", ITEMS_OK, "inter", 5, "user_id", "must not be empty"),
    "unknown item": (INTER_OK + "u,zz,4\n", ITEMS_OK, "inter", 5, "item_id", "unknown item id 'zz'"),
    "header lacks the time column": ("user_id,item_id,time\nu,a,1\n", ITEMS_OK, "inter", 1,
                                     "timestamp", "no column 'timestamp'"),
    "empty interactions file": ("", ITEMS_OK, "inter", 1, None, "empty file"),
    "header only": ("user_id,item_id,timestamp\n", ITEMS_OK, "inter", None, None, "no interactions"),
    "items duplicate id": (INTER_OK, ITEMS_OK + "b,Beta again\n", "items", 5, "item_id",
                           "duplicate item id 'b' (first on line 3)"),
    "items missing title column": (INTER_OK, "item_id,name\na,A\n", "items", 1, "title",
                                   "no column 'title'"),
    "items row missing the title": (INTER_OK, ITEMS_OK + "d\n", "items", 5, "title", "row has 1 fields"),
    "unterminated quote": (INTER_OK, ITEMS_OK + 'd,"Delta\n', "items", 5, None, "malformed CSV"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rows_name_file_line_column(tmp_path: Path, case: str) -> None:
    inter_text, items_text, which, line, fld, words = BAD[case]
    inter, items = tmp_path / "inter.csv", tmp_path / "items.csv"
    inter.write_text(inter_text)
    items.write_text(items_text)
    out = tmp_path / "out"
    with pytest.raises(DataError) as ei:
        import_csv(inter, items, out)
    e, msg = ei.value, str(ei.value)
    bad = inter if which == "inter" else items
    assert str(bad) in msg
    if line is not None:
        assert e.line == line and f"line {line}" in msg
    if fld is not None:
        assert e.field == fld and f"field '{fld}'" in msg
    assert words in msg
    assert not out.exists()


def test_error_keeps_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    shutil.copy(FIXTURES / "items.csv", tmp_path / "items.csv")
    import_csv(FIXTURES / "interactions.csv", tmp_path / "items.csv", out, columns=COLS)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.csv"
    bad.write_text("customer,product,when\nu1,p1,1\nu1,p2,later\n")
    with pytest.raises(DataError):
        import_csv(bad, tmp_path / "items.csv", out, columns=COLS)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
