"""Saving and loading retrievers: round trips, the factory, and crash safety (faults and kill -9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import glossrec.retrieve.store as rt
from glossrec.config import RetrieveConfig
from glossrec.errors import ConfigError, DataError
from glossrec.io import Versions
from glossrec.retrieve import ItemTable, build_retriever, load_retriever
from glossrec.retrieve.bm25 import BM25Retriever
from glossrec.retrieve.dense import DenseRetriever
from glossrec.retrieve.faiss_index import FaissRetriever

QUERIES = ["red lipstick", "nail polish remover", "shampoo", ""]


def versions(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "CURRENT")


def test_bm25_round_trip(tmp_path: Path, catalog) -> None:
    ids, texts = catalog
    r = BM25Retriever(stemmer="english", k1=1.2, b=0.6)
    r.index(ids, texts)
    r.add(["x"], ["Title: Argan oil"])
    r.save(tmp_path / "ix")
    back = load_retriever(tmp_path / "ix")
    assert isinstance(back, BM25Retriever) and back.settings() == r.settings()
    assert back.ids == r.ids and back.texts == r.texts
    assert np.array_equal(back.score_all(QUERIES), r.score_all(QUERIES))
    assert json.loads((tmp_path / "ix" / "CURRENT").read_text())["version"] == "v-000001"


@pytest.mark.parametrize("cls", [DenseRetriever, FaissRetriever])
def test_dense_round_trip(tmp_path: Path, catalog, fake_encoder, cls: type) -> None:
    if cls is FaissRetriever:
        pytest.importorskip("faiss")
    ids, texts = catalog
    r = cls(encoder="fake", e5_prefixes=True, batch_size=8)
    r.index(ids, texts)
    r.remove(["item4"])
    r.save(tmp_path / "ix")
    back = load_retriever(tmp_path / "ix")
    assert type(back) is cls and back.settings() == r.settings()
    assert back.ids == r.ids and np.array_equal(back.embeddings, r.embeddings)
    for a, b in zip(back.search(QUERIES, 4), r.search(QUERIES, 4)):
        assert np.array_equal(a, b)
    back.add(["new"], ["Title: Bamboo toothbrush"])  # a loaded index stays editable
    assert back.ids[back.search(["bamboo toothbrush"], 1)[0][0, 0]] == "new"


def test_saves_replace_versions_and_sweep_leftovers(tmp_path: Path, catalog) -> None:
    ids, texts = catalog
    r = BM25Retriever()
    r.index(ids, texts)
    folder = tmp_path / "ix"
    r.save(folder)
    (folder / ".tmp-v-crashed").mkdir()  # what a killed save leaves behind
    (folder / ".CURRENT.x1y2.tmp").write_text("{")
    r.remove(["item0"])
    r.save(folder)
    assert versions(folder) == ["v-000002"]
    assert load_retriever(folder).ids == r.ids


def test_load_errors_name_the_problem(tmp_path: Path, catalog) -> None:
    with pytest.raises(DataError, match="not found"):
        load_retriever(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no saved retriever"):
        load_retriever(tmp_path / "empty")
    ids, texts = catalog
    r = BM25Retriever()
    r.index(ids, texts)
    r.save(tmp_path / "ix")
    with pytest.raises(DataError, match="'bm25' retriever, not 'dense'"):
        DenseRetriever.load(tmp_path / "ix")
    (tmp_path / "ix" / "v-000001" / "ids.json").write_text('["only one"]')
    with pytest.raises(DataError, match="ids.json"):
        load_retriever(tmp_path / "ix")
    (tmp_path / "ix" / "CURRENT").write_text("garbage")
    with pytest.raises(DataError, match="CURRENT"):
        load_retriever(tmp_path / "ix")


@pytest.mark.parametrize("step", ["write", "rename", "current", "prune"])
def test_fault_at_each_save_step_leaves_old_or_new(tmp_path: Path, catalog,
                                                    monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    ids, texts = catalog
    r = BM25Retriever()
    r.index(ids, texts)
    folder = tmp_path / "ix"
    r.save(folder)
    old_ids = list(r.ids)
    r.add(["new"], ["Title: Bamboo toothbrush"])

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(f"injected fault at {step}")

    if step == "write":
        monkeypatch.setattr(rt, "write_items", boom)  # mid-write of the new version
    elif step == "rename":
        monkeypatch.setattr(os, "rename", boom)
    elif step == "current":
        monkeypatch.setattr(Versions, "_write_pointer", boom)
    else:
        monkeypatch.setattr(Versions, "prune", boom)
    with pytest.raises(OSError, match="injected"):
        r.save(folder)
    monkeypatch.undo()
    loaded = load_retriever(folder).ids
    assert loaded == (list(r.ids) if step == "prune" else old_ids)
    r.save(folder)  # the next save publishes and sweeps whatever the fault left
    assert load_retriever(folder).ids == r.ids
    # A fault after the rename leaves a complete but unpublished (or unpruned) v-000002 behind.
    assert versions(folder) == ["v-000003" if step in ("current", "prune") else "v-000002"]


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from glossrec.retrieve.dense import DenseRetriever
    folder = sys.argv[1]
    state = []
    for name, n in (("a", 3000), ("b", 2000)):  # dense, so no encoder: set the embeddings directly
        r = DenseRetriever(encoder="unused")
        r._items.reset([name + str(i) for i in range(n)], ["t"] * n)
        r._emb = np.full((n, 64), n, dtype=np.float32)
        state.append(r)
    state[0].save(folder)
    print("ready", flush=True)
    n = 0
    while True:  # alternate the two states until killed
        n += 1
        state[n % 2].save(folder)
""")


def test_kill_9_mid_save_leaves_a_loadable_index(tmp_path: Path) -> None:
    folder = tmp_path / "ix"
    rng = np.random.default_rng(0)
    for trial in range(4):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], stdout=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(float(rng.uniform(0.05, 0.4)))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        back = load_retriever(folder)
        n = len(back)
        assert back.ids == [("a" if n == 3000 else "b") + str(i) for i in range(n)]
        assert n in (3000, 2000) and (back.embeddings == n).all()
    # Kills land mid-write (.tmp-v-*), between publishing steps (two v-* folders) or inside the
    # CURRENT replacement (.CURRENT.*.tmp); the next save sweeps all of them.
    r = BM25Retriever()
    r.index(["z"], ["Title: z"])
    r.save(folder)
    assert len(versions(folder)) == 1 and load_retriever(folder).ids == ["z"]


def test_build_retriever_from_config() -> None:
    assert isinstance(build_retriever(RetrieveConfig(retriever="bm25", bm25_stemmer="english")),
                      BM25Retriever)
    dense = build_retriever(RetrieveConfig(e5_prefixes=True, encode_batch_size=16))
    assert type(dense) is DenseRetriever and dense.e5_prefixes and dense.batch_size == 16
    pytest.importorskip("faiss")
    assert type(build_retriever(RetrieveConfig(faiss=True))) is FaissRetriever
    with pytest.raises(ConfigError, match="klingon"):
        build_retriever(RetrieveConfig(retriever="bm25", bm25_stemmer="klingon"))


def test_item_table_semantics() -> None:
    t = ItemTable(["a", "b", "c"], ["A", "B", "C"])
    keep, pos = t.upsert(["d", "b", "d"], ["D1", "B2", "D2"])  # repeated id: last text wins
    assert keep.tolist() == [1, 2] and pos.tolist() == [1, 3]
    assert t.ids == ["a", "b", "c", "d"] and t.texts == ["A", "B2", "C", "D2"]
    assert t.remove(["a", "c"]).tolist() == [False, True, False, True]
    assert t.ids == ["b", "d"] and t.pos == {"b": 0, "d": 1}
    with pytest.raises(KeyError, match="'x', 'y'"):
        t.remove(["b", "x", "y"])
    assert t.ids == ["b", "d"]
    with pytest.raises(ValueError, match="duplicate item ids: 'q'"):
        ItemTable(["q", "q"], ["1", "2"])


def test_a_staged_version_survives_other_publishes_and_gets_the_next_number(tmp_path: Path) -> None:
    v = Versions(tmp_path / "vs", "CURRENT", "v-")
    v.publish(lambda d: (d / "x").write_text("1"))
    staged = v.stage(lambda d: (d / "x").write_text("staged"))
    v.publish(lambda d: (d / "x").write_text("2"))  # its sweep leaves a held stage alone
    assert staged.path.is_dir() and v.read_pointer() == "v-000002"
    names: list[str] = []
    path = v.publish_staged(staged, lambda d, name: names.append(name), keep_previous=True)
    assert names == ["v-000003"] and path == v.current() and (path / "x").read_text() == "staged"
    assert sorted(p.name for p in v.folder.iterdir()) == ["CURRENT", "v-000002", "v-000003"]
    dropped = v.stage(lambda d: None)
    v.discard(dropped)
    assert not dropped.path.exists()


def test_write_json_strings_writes_what_write_json_writes(tmp_path: Path) -> None:
    from glossrec.io import write_json, write_json_strings

    for values in ([], ["a"], ["é\"x\\", "tab\there", "\u2028", "z"] * 3):
        write_json(tmp_path / "a.json", values)
        write_json_strings(tmp_path / "b.json", values, chunk=5)
        assert (tmp_path / "b.json").read_bytes() == (tmp_path / "a.json").read_bytes()
        assert json.loads((tmp_path / "b.json").read_text()) == values
