"""The raw Amazon 2014 importer: the paper's preprocessing on a hand-made fixture, and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from glossrec.data import load_dataset
from glossrec.data.amazon import import_amazon
from glossrec.errors import DataError


def _read_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_paper_preprocessing(amazon_raw, tmp_path: Path) -> None:
    reviews, meta = amazon_raw
    out = tmp_path / "ds"
    report = import_amazon(reviews, meta, out)

    seqs = _read_gz(out / "sequences.jsonl.gz")
    assert seqs == [
        # U1: sorted by time; B00D and B00C tie at 300 and keep file order (D first);
        # the exact duplicate B00B row is dropped.
        {"user_id": "U1", "items": ["B00A", "B00B", "B00D", "B00C"]},
        # U2: untitled B00E ('' title) dropped.
        {"user_id": "U2", "items": ["B00A", "B00B", "B00C"]},
        # U3 (A, B + untitled F) and U4 (2 items) fall under 3 items. U5: B00H has no
        # metadata; B00B twice at 200 with different ratings is not an exact duplicate.
        {"user_id": "U5", "items": ["B00G", "B00A", "B00B", "B00B", "B00L"]},
    ]
    items = {o["item_id"]: o for o in _read_gz(out / "items.jsonl.gz")}
    assert list(items) == ["B00A", "B00B", "B00C", "B00D", "B00G", "B00L"]  # only used items
    assert items["B00B"]["title"] == "Tom &amp; Jerry Shampoo Deluxe"  # entity kept, ws collapsed
    assert items["B00G"]["title"] == 'Nail Polish &quot;Red&quot;'
    assert items["B00C"]["title"] == "Men's Gel"
    assert items["B00D"]["title"] == " ".join(f"w{k}" for k in range(1, 26))  # first 25 words
    assert items["B00A"] == {"item_id": "B00A", "title": "Rose Hand Cream", "brand": "Acme",
                             "categories": [["Beauty", "Skin Care"]], "price": 4.5}

    assert (report.rows, report.duplicate_rows) == (20, 1)
    assert report.untitled_items == ["B00E", "B00F", "B00H"]
    assert report.no_metadata_items == ["B00H"]
    assert report.untitled_interactions == 3
    assert (report.short_users, report.short_user_interactions) == (2, 4)
    assert (report.users, report.items, report.interactions, report.mean_length) == (3, 6, 12, 4.0)
    assert json.loads((out / "import_report.json").read_text())["duplicate_rows"] == 1

    ds = load_dataset(out)
    assert ds.users == ["U1", "U2", "U5"]
    assert ds.catalog.text(ds.catalog.index["B00B"]) == "Title: Tom &amp; Jerry Shampoo Deluxe"
    assert not ds.report.lines()  # the importer left nothing for the loader to skip


def test_options_min_items_and_title_words(amazon_raw, tmp_path: Path) -> None:
    reviews, meta = amazon_raw
    report = import_amazon(reviews, meta, tmp_path / "ds", min_items=1, title_words=None,
                           attributes=("brand",))
    seqs = {o["user_id"]: o["items"] for o in _read_gz(tmp_path / "ds" / "sequences.jsonl.gz")}
    assert seqs["U3"] == ["B00A", "B00B"] and seqs["U4"] == ["B00A", "B00C"]
    assert report.short_users == 0
    items = {o["item_id"]: o for o in _read_gz(tmp_path / "ds" / "items.jsonl.gz")}
    assert len(items["B00D"]["title"].split()) == 27
    assert items["B00A"] == {"item_id": "B00A", "title": "Rose Hand Cream", "brand": "Acme"}


def test_json_meta_lines_are_accepted(tmp_path: Path) -> None:
    reviews = tmp_path / "r.json"
    reviews.write_text("".join(json.dumps({"reviewerID": "u", "asin": a, "unixReviewTime": t,
                                           "overall": 5.0}) + "\n"
                               for t, a in enumerate(["x", "y", "z"])))
    meta = tmp_path / "m.json"
    meta.write_text("".join(json.dumps({"asin": a, "title": a.upper(), "price": None,
                                        "on_sale": True}) + "\n" for a in "xyz"))
    import_amazon(reviews, meta, tmp_path / "ds", attributes=("price", "on_sale"))
    assert _read_gz(tmp_path / "ds" / "items.jsonl.gz")[0] == {
        "item_id": "x", "title": "X", "price": None, "on_sale": True}


def _write(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    return path


def _review(**over) -> str:
    row = {"reviewerID": "U1", "asin": "B00A", "unixReviewTime": 100, "overall": 5.0}
    row.update(over)
    return json.dumps({k: v for k, v in row.items() if v is not ...})


GOOD_META = ["{'asin': 'B00A', 'title': 'Alpha'}", "{'asin': 'B00B', 'title': 'Beta'}",
             "{'asin': 'B00C', 'title': 'Gamma'}"]
GOOD_REVIEWS = [_review(asin="B00A"), _review(asin="B00B", unixReviewTime=200),
                _review(asin="B00C", unixReviewTime=300)]

BAD = {
    # name: (reviews lines, meta lines, bad file, line, field, words)
    "bad json review": (GOOD_REVIEWS[:1] + ['{"reviewerID": "U1", "asin": '] + GOOD_REVIEWS[1:],
                        GOOD_META, "reviews", 2, None, "not valid JSON"),
    "missing time": (GOOD_REVIEWS + [_review(unixReviewTime=...)], GOOD_META, "reviews", 4,
                     "unixReviewTime", "missing"),
    "missing rating": (GOOD_REVIEWS[:2] + [_review(overall=...)], GOOD_META, "reviews", 3,
                       "overall", "missing"),
    "time wrong type": ([_review(unixReviewTime="yesterday")] + GOOD_REVIEWS, GOOD_META,
                        "reviews", 1, "unixReviewTime", "must be a number, got str"),
    "rating wrong type": (GOOD_REVIEWS + [_review(overall=True)], GOOD_META, "reviews", 4,
                          "overall", "must be a number, got bool"),
    "asin wrong type": (GOOD_REVIEWS + [_review(asin=12)], GOOD_META, "reviews", 4, "asin",
                        "must be a string, got int"),
    "empty reviewer": (GOOD_REVIEWS + [_review(reviewerID=" ")], GOOD_META, "reviews", 4,
                       "reviewerID", "must not be empty"),
    "empty reviews file": ([], GOOD_META, "reviews", None, None, "empty file"),
    "bad literal meta": (GOOD_REVIEWS, GOOD_META[:1] + ["{'asin': 'B00B', 'title': 'Beta'"]
                         + GOOD_META[2:], "meta", 2, None, "not a valid Python literal"),
    "meta not a dict": (GOOD_REVIEWS, GOOD_META + ["['B00D', 'x']"], "meta", 4, None,
                        "expected a dict, got list"),
    "meta title wrong type": (GOOD_REVIEWS, GOOD_META[:2] + ["{'asin': 'B00C', 'title': 3}"],
                              "meta", 3, "title", "must be a string, got int"),
    "meta duplicate asin": (GOOD_REVIEWS, GOOD_META + ["{'asin': 'B00A', 'title': 'Again'}"],
                            "meta", 4, "asin", "duplicate asin 'B00A' (first on line 1)"),
    "meta missing asin": (GOOD_REVIEWS, GOOD_META + ["{'title': 'No asin'}"], "meta", 4, "asin",
                          "missing"),
    "meta value not JSON": (GOOD_REVIEWS, ["{'asin': 'B00A', 'title': 'A', 'brand': {1, 2}}"]
                            + GOOD_META[1:], "meta", 1, "brand", "cannot be stored as JSON"),
    "empty meta file": (GOOD_REVIEWS, [], "meta", None, None, "empty file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_line_field_and_writes_nothing(tmp_path: Path, case: str) -> None:
    reviews_lines, meta_lines, which, line, fld, words = BAD[case]
    reviews = _write(tmp_path / "reviews_X_5.json.gz", reviews_lines)
    meta = _write(tmp_path / "meta_X.json.gz", meta_lines)
    out = tmp_path / "out"
    with pytest.raises(DataError) as ei:
        import_amazon(reviews, meta, out)
    e, msg = ei.value, str(ei.value)
    bad_file = reviews if which == "reviews" else meta
    assert str(bad_file) in msg and Path(str(e.path)) == bad_file
    if line is not None:
        assert e.line == line and f"line {line}" in msg
    if fld is not None:
        assert e.field == fld and f"field '{fld}'" in msg
    assert words in msg
    assert not out.exists()


def test_truncated_gzip_and_no_partial_output(amazon_raw, tmp_path: Path) -> None:
    reviews, meta = amazon_raw
    out = tmp_path / "ds"
    import_amazon(reviews, meta, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    big = _write(tmp_path / "big.json.gz", [_review(asin=f"A{k:05d}", reviewerID=f"U{k % 50}",
                                                    unixReviewTime=k) for k in range(5000)])
    big.write_bytes(big.read_bytes()[:-200])
    with pytest.raises(DataError) as ei:
        import_amazon(big, meta, out)
    assert str(big) in str(ei.value) and "truncated or corrupt" in str(ei.value)
    assert "line" in str(ei.value)
    # The earlier import is untouched and no temporary file is left behind.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_all_users_too_short_is_an_error(tmp_path: Path) -> None:
    reviews = _write(tmp_path / "r.json.gz", GOOD_REVIEWS[:2])
    meta = _write(tmp_path / "m.json.gz", GOOD_META)
    with pytest.raises(DataError, match="no user has at least 3 titled items"):
        import_amazon(reviews, meta, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unneeded_meta_lines_are_not_parsed(tmp_path: Path) -> None:
    """A 250k-line category file is mostly items outside the 5-core: they cost a regex only."""
    reviews = _write(tmp_path / "r.json.gz", GOOD_REVIEWS)
    meta = _write(tmp_path / "m.json.gz", ["{'asin': 'Z1', 'title': broken"] + GOOD_META)
    assert import_amazon(reviews, meta, tmp_path / "out").items == 3


def test_round_trip_of_the_shipped_sample(repo_root: Path, tmp_path: Path) -> None:
    """Real titles (quotes, entities, unicode, newlines) survive Python-literal meta lines, and
    shuffled reviews come back in time order: raw files made from part of the shipped sample
    import to what loading that part gives. (On full Beauty the same round trip reproduces all
    22,363 users exactly; import takes ~15 s.)"""
    import random

    src = repo_root / "data" / "beauty-sample"
    seqs = _read_gz(src / "sequences.jsonl.gz")[:600]  # a slice keeps the test ~1 s
    used = {a for s in seqs for a in s["items"]}
    items = [o for o in _read_gz(src / "items.jsonl.gz") if o["item_id"] in used]
    rows = [(s["user_id"], a, 1000 * p) for s in seqs for p, a in enumerate(s["items"])]
    random.Random(0).shuffle(rows)
    reviews = _write(tmp_path / "reviews.json.gz", [
        json.dumps({"reviewerID": u, "asin": a, "unixReviewTime": t, "overall": 5.0})
        for u, a, t in rows])
    meta = _write(tmp_path / "meta.json.gz", [
        repr({"asin": o["item_id"], "categories": o["categories"],
              **({"title": o["title"]} if o["title"] is not None else {})}) for o in items])
    import_amazon(reviews, meta, tmp_path / "ds")

    want_dir = tmp_path / "want"
    want_dir.mkdir()
    for name, objs in (("items", items), ("sequences", seqs)):
        (want_dir / f"{name}.jsonl").write_text("".join(json.dumps(o) + "\n" for o in objs))
    want, got = load_dataset(want_dir), load_dataset(tmp_path / "ds")
    as_text = lambda ds: {u: [ds.catalog.text(i) for i in s]  # noqa: E731
                          for u, s in zip(ds.users, ds.sequences) if len(s) >= 3}
    assert as_text(got) == as_text(want)
    assert got.stats() == want.stats()
