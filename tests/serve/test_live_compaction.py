"""The live catalog's compaction off the request path: writes during a background build,
publishing, discarding, abandoning, other processes, and kill -9 at random moments."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from glossrec.retrieve.bm25 import BM25Retriever
from glossrec.retrieve.live import POINTER, ItemRecord, LiveCatalog

from ..retrieve.test_bm25 import QUERIES, random_texts, reference_scores


def _bm25_catalog(folder: Path, n: int = 60, limit: int = 3) -> LiveCatalog:
    texts = random_texts(n, seed=3)
    cat = LiveCatalog.create(folder, [ItemRecord(f"i{j}", t[len("Title: "):] or "plain") for j, t in enumerate(texts)],
                             BM25Retriever())
    cat.journal_limit = limit
    return cat


def _open(folder: Path, limit: int = 3) -> LiveCatalog:
    return LiveCatalog.open(folder, journal_limit=limit)


def _exact(cat: LiveCatalog) -> bool:
    """The catalog's BM25 scores equal a from-scratch bm25s index of its items, bit for bit."""
    ref = reference_scores(list(cat.retriever.texts), QUERIES)
    return bool(np.array_equal(cat.retriever.score_all(QUERIES), ref))


@pytest.fixture()
def gate(monkeypatch: pytest.MonkeyPatch):
    """Holds every background build at its start until `release` is set."""
    started, release = threading.Event(), threading.Event()
    real = LiveCatalog._write_snapshot

    def held(tmp: Path, state: object, cancel: threading.Event | None) -> None:
        if cancel is not None:
            started.set()
            assert release.wait(20)
        real(tmp, state, cancel)  # type: ignore[arg-type]

    monkeypatch.setattr(LiveCatalog, "_write_snapshot", staticmethod(held))
    yield started, release
    release.set()


def test_writes_during_a_background_compaction_return_at_once_and_are_searchable(
        tmp_path: Path, gate) -> None:
    started, release = gate
    cat = _bm25_catalog(tmp_path / "index")
    cat.add([ItemRecord("n1", "zzfirst lotion")])
    cat.remove(["i0"])
    cat.add([ItemRecord("n2", "zzsecond serum")])  # the 3rd write: a compaction starts
    assert started.wait(10) and cat.compacting
    assert cat.version == "catalog-000001+000003"
    # While the build is held: writes return at once and are searchable at once, exactly.
    t0 = time.perf_counter()
    cat.add([ItemRecord("n3", "zzduring gel"), ItemRecord("i5", "replaced zzduring oil")])
    cat.remove(["i7"])
    assert time.perf_counter() - t0 < 2.0
    assert cat.compacting and cat.version == "catalog-000001+000005"
    assert cat.id_at(int(cat.retriever.search(["zzduring gel"], 1)[0][0, 0])) == "n3"
    assert _exact(cat)
    release.set()
    assert cat.wait_compacted(20)
    stats = cat.compactions[-1]
    assert stats.background and stats.outcome == "published" and stats.folded == 3 and stats.tail == 2
    # The new snapshot holds the first 3 writes; its journal the 2 made during the build.
    assert cat.version == "catalog-000002+000002"
    assert sorted(p.name for p in cat.folder.glob("catalog-*")) == ["catalog-000001", "catalog-000002"]
    assert not list(cat.folder.glob(".stage-*"))
    fresh = _open(cat.folder)
    assert fresh.version == cat.version and fresh.retriever.ids == cat.retriever.ids
    assert fresh.items() == cat.items() and fresh.get("i5").title == "replaced zzduring oil"
    assert "i0" not in fresh and "i7" not in fresh and {"n1", "n2", "n3"} <= set(fresh.retriever.ids)
    assert _exact(fresh) and _exact(cat)
    # Writing goes on in the new snapshot's journal; the next compaction folds it.
    cat.add([ItemRecord("n4", "zzafter mask")])
    assert cat.version == "catalog-000002+000003" and cat.wait_compacted(20)
    assert cat.version == "catalog-000003" and _open(cat.folder).get("n4") is not None


def test_a_reader_follows_the_journal_and_the_background_publish(tmp_path: Path, gate) -> None:
    started, release = gate
    cat = _bm25_catalog(tmp_path / "index")
    reader = _open(cat.folder, limit=1000)
    for j in range(3):
        cat.add([ItemRecord(f"n{j}", f"zzword{j} cream")])
    assert started.wait(10)
    cat.add([ItemRecord("n3", "zzword3 cream")])
    assert reader.refresh() and reader.version == "catalog-000001+000004"
    release.set()
    assert cat.wait_compacted(20)
    assert reader.refresh() and reader.version == cat.version == "catalog-000002+000001"
    assert reader.retriever.ids == cat.retriever.ids and _exact(reader)
    assert not reader.refresh()


def test_publish_is_discarded_when_another_writer_compacted_first(tmp_path: Path, gate) -> None:
    started, release = gate
    cat = _bm25_catalog(tmp_path / "index")
    other = _open(cat.folder, limit=1000)  # a second writer, e.g. `glossrec items add`
    for j in range(3):
        cat.add([ItemRecord(f"n{j}", f"zzword{j} cream")])
    assert started.wait(10)
    other.add([ItemRecord("o1", "zzother balm")])
    assert other.compact() == "catalog-000002"  # publishes while cat's build is held
    release.set()
    assert cat.wait_compacted(20)
    assert cat.compactions[-1].outcome == "discarded"
    assert (cat.folder / POINTER).read_text().strip() == "catalog-000002"
    assert not list(cat.folder.glob(".stage-*"))
    cat.add([ItemRecord("n3", "zzword3 cream")])  # follows the other writer's snapshot
    fresh = _open(cat.folder)
    assert {"n0", "n1", "n2", "n3", "o1"} <= set(fresh.retriever.ids) and _exact(fresh)


def test_close_abandons_or_waits_for_a_running_compaction(tmp_path: Path, gate) -> None:
    started, release = gate
    cat = _bm25_catalog(tmp_path / "index")
    for j in range(3):
        cat.add([ItemRecord(f"n{j}", f"zzword{j} cream")])
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    cat.close()
    assert not cat.compacting and cat.compactions[-1].outcome == "abandoned"
    assert not list(cat.folder.glob(".stage-*"))
    back = _open(cat.folder)
    assert back.version == "catalog-000001+000003" and {"n0", "n1", "n2"} <= set(back.retriever.ids)
    # After close a write that is due compacts in the write.
    cat.add([ItemRecord("n3", "zzword3 cream")])
    assert cat.version == "catalog-000002" and cat.compactions[-1].background is False
    # close(wait=True) lets a compaction under way publish.
    back.journal_limit = 1
    started.clear()
    back.add([ItemRecord("n4", "zzword4 cream")])
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    back.close(wait=True)
    assert back.compactions[-1].outcome == "published" and back.version == "catalog-000003"


def test_synchronous_compaction_when_background_is_off(tmp_path: Path) -> None:
    cat = _bm25_catalog(tmp_path / "index")
    cat.background = False
    for j in range(3):
        cat.add([ItemRecord(f"n{j}", f"zzword{j} cream")])
    assert cat.version == "catalog-000002" and not cat.compacting
    assert cat.compactions[-1].background is False and cat.compactions[-1].outcome == "published"
    cat.add([ItemRecord("n3", "zzword3 cream")])
    assert cat.compact() == "catalog-000003" and _exact(_open(cat.folder))


def test_a_new_catalogs_first_snapshot_is_not_announced_as_a_compaction(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="glossrec.retrieve.live")
    cat = _bm25_catalog(tmp_path / "index")
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    assert not cat.compactions
    cat.background = False
    for j in range(3):
        cat.add([ItemRecord(f"n{j}", f"zzword{j} cream")])
    announced = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(announced) == 1 and "catalog-000002, 63 items" in announced[0]


def test_a_dead_builders_staged_folder_is_swept(tmp_path: Path) -> None:
    cat = _bm25_catalog(tmp_path / "index")
    cat.background = False
    dead = cat.folder / ".stage-catalog-999999-deadbeef"  # no process holds its lock
    dead.mkdir()
    (dead / "items.jsonl").write_text('{"item_id": "i0", "ti')
    for j in range(3):
        cat.add([ItemRecord(f"n{j}", f"zzword{j} cream")])
    assert cat.version == "catalog-000002" and not dead.exists()


CHILD = textwrap.dedent("""
    import sys
    from glossrec.retrieve.live import ItemRecord, LiveCatalog
    cat = LiveCatalog.open(sys.argv[1], journal_limit=int(sys.argv[2]))
    n = 0
    while True:  # write until killed; each id is printed once its write has returned
        iid = f"k{sys.argv[3]}-{n}"
        if n % 5 == 4:
            cat.add([ItemRecord(f"k{sys.argv[3]}-0", f"zzreplaced {n} cream")])
        else:
            cat.add([ItemRecord(iid, f"zzkill {n} serum lotion")])
            print(iid, flush=True)
        n += 1
""")


def test_kill_9_at_random_moments_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    cat = _bm25_catalog(folder, n=1500)  # snapshots take long enough to be killed in
    cat.close()
    rng = np.random.default_rng(0)
    acked: list[str] = []
    for trial in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), "4", str(trial)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().strip()
            assert first, "the writer did not start"
            acked.append(first)
            time.sleep(float(rng.uniform(0.3, 1.5)))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        acked += proc.stdout.read().split()
        back = _open(folder)  # CATALOG names a complete folder holding every acknowledged write
        missing = [i for i in acked if i not in back]
        assert not missing, (missing, back.version)
    assert _exact(back)
    stages = list(folder.glob(".stage-*"))
    back.compact()  # the next publish sweeps what the killed builders left
    assert not list(folder.glob(".stage-*")) and not list(folder.glob(".tmp-*")), stages
