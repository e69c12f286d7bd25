from __future__ import annotations

import json
from pathlib import Path

import pytest

from glossrec.errors import DataError
from glossrec.retrieve.live import (
    POINTER, ItemRecord, LiveCatalog, UnknownItemsError, read_items_file,
)

from .conftest import TITLES, WordRetriever


def _open(folder: Path) -> LiveCatalog:
    return LiveCatalog.open(folder, loader=WordRetriever.load)


def test_create_then_open_roundtrip(word_catalog: LiveCatalog) -> None:
    again = _open(word_catalog.folder)
    assert len(again) == len(TITLES)
    assert again.version == word_catalog.version == "catalog-000001"
    assert again.get("A2").title == TITLES["A2"]
    assert again.retriever.ids == list(TITLES)
    assert again.formatter.item_format == "Title: {title}"


def test_add_persists_new_version_and_prunes_old(word_catalog: LiveCatalog) -> None:
    res = word_catalog.add([ItemRecord("N1", "Lavender bath salts", {"brand": "X"})])
    assert res.added == ["N1"] and res.replaced == [] and res.version == "catalog-000002"
    word_catalog.add([ItemRecord("A1", "Shea butter hand cream 8 oz")])
    word_catalog.add([ItemRecord("N2", "Jade roller")])
    folder = word_catalog.folder
    assert (folder / POINTER).read_text().strip() == "catalog-000004"
    versions = sorted(p.name for p in folder.iterdir() if p.name.startswith("catalog-"))
    assert versions == ["catalog-000003", "catalog-000004"]  # current + one before
    again = _open(folder)
    assert again.get("N1").attrs == {"brand": "X"}
    assert again.get("A1").title.endswith("8 oz")
    assert len(again) == len(TITLES) + 2


def test_remove_is_all_or_nothing_and_names_unknown_ids(word_catalog: LiveCatalog) -> None:
    with pytest.raises(UnknownItemsError) as e:
        word_catalog.remove(["A1", "NOPE", "ALSO-NOPE"])
    assert e.value.ids == ["NOPE", "ALSO-NOPE"] and "NOPE" in str(e.value)
    assert "A1" in word_catalog and word_catalog.version == "catalog-000001"
    word_catalog.remove(["A1", "A2"])
    again = _open(word_catalog.folder)
    assert "A1" not in again and "A2" not in again and len(again) == len(TITLES) - 2


def test_invalid_items_are_rejected_with_field(word_catalog: LiveCatalog) -> None:
    with pytest.raises(DataError, match="title"):
        word_catalog.add([ItemRecord("X", "   ")])
    with pytest.raises(DataError, match="item_id"):
        word_catalog.add([ItemRecord("bad\nid", "t")])
    assert word_catalog.version == "catalog-000001"


def test_failed_journal_append_rolls_back_memory(word_catalog: LiveCatalog, monkeypatch) -> None:
    def boom(entry: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(word_catalog, "_append", boom)
    with pytest.raises(OSError):
        word_catalog.add([ItemRecord("N1", "Lavender bath salts")])
    assert "N1" not in word_catalog and "N1" not in word_catalog.retriever.ids
    assert _open(word_catalog.folder).version == "catalog-000001"


def test_failed_compaction_keeps_the_journaled_write(word_catalog: LiveCatalog, monkeypatch) -> None:
    def boom(folder: Path) -> None:
        raise OSError("disk full")

    folder = word_catalog.folder
    monkeypatch.setattr(word_catalog.retriever, "write", boom)  # the snapshot fails, not the write
    res = word_catalog.add([ItemRecord("N1", "Lavender bath salts")])
    assert res.version == "catalog-000001+000001" and "N1" in word_catalog
    assert word_catalog.compactions[-1].outcome == "failed"
    assert not list(folder.glob(".tmp-*")) and not list(folder.glob(".stage-*"))
    back = _open(folder)
    assert back.version == "catalog-000001+000001" and "N1" in back
    monkeypatch.undo()
    word_catalog.add([ItemRecord("N2", "Jade roller")])  # the next write compacts
    assert word_catalog.version == "catalog-000002"
    assert {"N1", "N2"} <= set(_open(folder).retriever.ids)


def test_crash_leftovers_are_ignored_and_swept(word_catalog: LiveCatalog) -> None:
    folder = word_catalog.folder
    # A writer killed mid-write leaves a temp folder, or a complete folder not yet published.
    (folder / ".tmp-catalog-000002-999").mkdir()
    (folder / ".tmp-catalog-000002-999" / "items.jsonl").write_text('{"item_id": "A1", "ti')
    half = folder / "catalog-000002"
    half.mkdir()
    assert _open(folder).version == "catalog-000001"
    word_catalog.add([ItemRecord("N1", "Jade roller")])
    assert word_catalog.version == "catalog-000003"
    assert not list(folder.glob(".tmp-*"))
    # The unpublished folder is dropped; the version that was current stays for late readers.
    assert sorted(p.name for p in folder.glob("catalog-*")) == ["catalog-000001", "catalog-000003"]


def test_other_process_writes_are_seen_by_refresh(word_catalog: LiveCatalog) -> None:
    other = _open(word_catalog.folder)
    other.add([ItemRecord("N1", "Jade roller")])
    assert "N1" not in word_catalog
    assert word_catalog.refresh() is True
    assert "N1" in word_catalog
    # A writer that is behind applies its change on top of the newer state.
    other.add([ItemRecord("N2", "Gua sha stone")])
    word_catalog.remove(["A1"])
    final = _open(word_catalog.folder)
    assert {"N1", "N2"} <= set(final.retriever.ids) and "A1" not in final


def test_pointer_to_missing_version_is_a_clear_error(word_catalog: LiveCatalog) -> None:
    (word_catalog.folder / POINTER).write_text("catalog-000009\n")
    with pytest.raises(DataError, match="catalog-000009"):
        _open(word_catalog.folder)
    (word_catalog.folder / POINTER).write_text("../../etc\n")
    with pytest.raises(DataError, match="not a catalog version"):
        _open(word_catalog.folder)


def test_missing_catalog_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="glossrec index"):
        _open(tmp_path)


def test_read_items_file_names_line_and_field(tmp_path: Path) -> None:
    p = tmp_path / "new.jsonl"
    p.write_text(json.dumps({"item_id": "N1", "title": "ok", "brand": "B"}) + "\n"
                 + json.dumps({"item_id": "N2", "title": ""}) + "\n")
    with pytest.raises(DataError) as e:
        read_items_file(p)
    assert "line 2" in str(e.value) and "title" in str(e.value)
    p.write_text(json.dumps({"item_id": "N1", "title": "ok", "brand": "B"}) + "\n")
    assert read_items_file(p) == [ItemRecord("N1", "ok", {"brand": "B"})]


# ---- the journal: O(change) writes between snapshots -----------------------------------------


def test_journaled_writes_are_replayed_and_compacted(word_catalog: LiveCatalog) -> None:
    folder = word_catalog.folder
    word_catalog.journal_limit = 3
    word_catalog.add([ItemRecord("N1", "Jade roller")])
    word_catalog.remove(["A1"])
    assert word_catalog.version == "catalog-000001+000002"
    assert sorted(p.name for p in folder.glob("catalog-*")) == ["catalog-000001"]  # no new snapshot
    other = _open(folder)  # a reader in another process replays the journal
    assert other.version == word_catalog.version and "N1" in other and "A1" not in other
    word_catalog.add([ItemRecord("N2", "Gua sha stone")])  # the 3rd write compacts
    assert word_catalog.version == "catalog-000002"
    assert other.refresh() and other.version == "catalog-000002" and "N2" in other
    word_catalog.add([ItemRecord("N3", "Rose quartz roller")])
    assert other.refresh() and "N3" in other and other.version == "catalog-000002+000001"
    assert other.retriever.ids == word_catalog.retriever.ids


def test_a_cut_off_journal_line_is_ignored_and_overwritten(word_catalog: LiveCatalog) -> None:
    word_catalog.journal_limit = 100
    word_catalog.add([ItemRecord("N1", "Jade roller")])
    journal = word_catalog.folder / word_catalog.snapshot / "journal.jsonl"
    with open(journal, "ab") as f:
        f.write(b'{"seq": 2, "op": "add", "items": [{"item_id": "HALF", "ti')  # kill -9 mid-append
    back = _open(word_catalog.folder)
    assert "N1" in back and "HALF" not in back and back.version == "catalog-000001+000001"
    back.journal_limit = 100
    back.add([ItemRecord("N2", "Gua sha stone")])
    again = _open(word_catalog.folder)
    assert "N2" in again and "HALF" not in again and again.version == "catalog-000001+000002"
    # A bad line with good ones after it is corruption, named.
    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join([b"garbage", *lines[1:]]))
    with pytest.raises(DataError, match="journal"):
        _open(word_catalog.folder)


def test_find_matches_title_words_as_typed_and_follows_writes(word_catalog: LiveCatalog) -> None:
    def ids(q: str, limit: int = 10) -> list[str]:
        return [r.item_id for r in word_catalog.find(q, limit)[0]]

    # every word, any order, any part of a word, any case
    assert ids("ARGAN dr") == ["A2", "A3"]  # same tier: the shorter title first
    assert ids("hair argan cond") == ["A3"]
    assert ids("oil") == ["A2", "B3", "A3"]  # all start a word: by length
    # a title that starts with it, then one with a word that does (shorter first), then inside a word
    word_catalog.add([ItemRecord("N0", "Himalayan salt scrub")])
    assert ids("ma") == ["A4", "B2", "A5", "N0"]
    assert ids("zzz") == [] and word_catalog.find("zzz", 5) == ([], 0)
    # the exact id comes first; a blank query lists the catalog; limit caps, the count does not
    assert ids("B1")[0] == "B1"
    found, total = word_catalog.find("  ", 3)
    assert len(found) == 3 and total == len(TITLES) + 1
    # the table follows the live catalog
    word_catalog.add([ItemRecord("N1", "Argan oil travel kit")])
    assert ids("argan") == ["N1", "A2", "A3"]  # "Argan oil travel kit" is the shortest
    word_catalog.remove(["A2"])
    assert ids("argan") == ["N1", "A3"]
