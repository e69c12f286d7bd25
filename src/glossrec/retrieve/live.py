"""The live catalog: item records and their retrieval index, persisted as one versioned folder.

Layout of ``RUN_DIR/index/`` (a service and the CLI may share it)::

    CATALOG                  one line: the name of the current version folder
    catalog-000007/
        meta.json            format, version, retriever kind, item format, item count
        items.jsonl          one {"item_id", "title", ...attributes} per item, in index order
        retriever/           the retriever's plain files (Retriever.write)
        journal.jsonl        writes since this snapshot: {"seq", "op": "add"|"remove", ...}
    .stage-catalog-PID-XXXX/ a snapshot being built (compaction), not yet a version
    .lock                    fcntl lock serialising writers across processes

Writes cost O(change): a write is applied in memory, appended to the current snapshot's journal
and fsynced before it returns (a line cut off by kill -9 was never acknowledged and is ignored).
Readers in other processes replay the journal's new lines (:meth:`LiveCatalog.refresh`).

Compaction folds the journal into a new snapshot once it holds ``journal_limit`` writes (by
default one per 1,000 items, so the cost of a snapshot, O(catalog), is shared by 1,000 writes).
It runs off the request path, in a background thread (one at a time per catalog):

1. freeze: the write that reaches the limit, still holding the locks, takes a consistent copy
   of the state at its journal position (the items dict copied, the retriever's
   :meth:`~glossrec.retrieve.base.Retriever.frozen` copy: lists copied, arrays copy-on-write),
   starts the thread and returns as any write does;
2. build: the thread writes that copy as a complete folder under a temporary name
   (:meth:`glossrec.io.Versions.stage`) holding no lock, neither the in-process lock that
   searches take nor the cross-process fcntl lock; writes go on appending to the journal;
3. publish, under both locks: the journal entries written since the freeze are copied
   (renumbered from 1) into the new folder's journal, which then becomes current through
   :class:`glossrec.io.Versions` (fsynced, renamed into place, then ``CATALOG`` replaced
   atomically); the in-memory state already holds those writes, so nothing is reloaded. If
   another process published a snapshot meanwhile, the built folder is discarded.

A crash at any moment (kill -9 included) leaves ``CATALOG`` naming a complete folder whose
snapshot plus journal hold every acknowledged write: before the pointer moves, the old folder
and its journal; after, the new one with the journal's tail. A staged folder left by a dead
process is swept by the next publish. :attr:`LiveCatalog.background` False (or a retriever
without a frozen copy) compacts in the write that reaches the limit, holding the locks;
:meth:`LiveCatalog.compact` compacts now; :meth:`LiveCatalog.close` waits for or abandons a
running compaction.
"""

from __future__ import annotations

import fcntl
import heapq
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.data import Catalog
from glossrec.errors import DataError, GlossrecError
from glossrec.io import (
    FAULT_ENV, Staged, Versions, atomic_write, fault_point, iter_jsonl, read_json, write_json,
    yield_gil,
)
from glossrec.retrieve.base import FrozenRetriever, Retriever

logger = logging.getLogger(__name__)

POINTER = "CATALOG"
JOURNAL = "journal.jsonl"
"""Inside a version folder: the writes made since that snapshot, one JSON line each."""
FORMAT = "glossrec-live-catalog/1"
WRITE_DELAY_ENV = FAULT_ENV
"""The crash tests' fault points (glossrec.io.fault_point): "journal" (mid journal line),
"items" (a compaction mid items.jsonl: in the background thread, or in the write when
compaction is synchronous) or "publish" (new folder in place, pointer not yet replaced)."""
_MAX_ID_CHARS = 256

RetrieverLoader = Callable[[Path], Retriever]


class UnknownItemsError(GlossrecError):
    """Item ids that the catalog does not hold; ``ids`` names them all."""

    def __init__(self, ids: Sequence[str], what: str = "unknown item ids") -> None:
        self.ids = list(ids)
        shown = ", ".join(repr(i) for i in self.ids[:20])
        more = f" (and {len(self.ids) - 20} more)" if len(self.ids) > 20 else ""
        super().__init__(f"{what}: {shown}{more}")


@dataclass(frozen=True)
class ItemRecord:
    """One catalog item as stored: id, raw title, other attributes (used by item_format)."""

    item_id: str
    title: str
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "title": self.title, **dict(self.attrs)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], path: Path | None = None,
                  line: int | None = None) -> ItemRecord:
        """Validate a JSON item; errors name the file, line and field."""
        iid = obj.get("item_id")
        title = obj.get("title")
        rec = cls(iid, title, {k: v for k, v in obj.items() if k not in ("item_id", "title")})  # type: ignore[arg-type]
        problem = rec.problem()
        if problem:
            raise DataError(problem[1], path, line, problem[0])
        return rec

    def problem(self) -> tuple[str, str] | None:
        """(field, message) when this record cannot go into a catalog, else None."""
        if not isinstance(self.item_id, str) or not self.item_id.strip():
            return "item_id", f"must be a non-empty string, got {self.item_id!r}"
        if len(self.item_id) > _MAX_ID_CHARS:
            return "item_id", f"longer than {_MAX_ID_CHARS} characters"
        if any(ord(c) < 32 for c in self.item_id) or self.item_id != self.item_id.strip():
            return "item_id", f"must not contain control characters or edge spaces: {self.item_id!r}"
        if not isinstance(self.title, str) or not self.title.strip():
            return "title", f"must be a non-empty string, got {self.title!r}"
        return None


@dataclass(frozen=True)
class WriteResult:
    added: list[str]
    replaced: list[str]
    removed: list[str]
    version: str


@dataclass
class CompactionStats:
    """One compaction: its size, where its time went, and how it ended."""

    background: bool
    items: int = 0
    folded: int = 0
    """Journal entries the snapshot holds (the journal's length at the freeze)."""
    freeze_ms: float = 0.0
    """The consistent copy taken under the locks (background only)."""
    build_s: float = 0.0
    """Writing the snapshot's files (without the locks in the background)."""
    publish_ms: float = 0.0
    """Under the locks: the journal's tail copied, the folder renamed, the pointer replaced."""
    tail: int = 0
    """Writes made during the build, carried into the new snapshot's journal."""
    outcome: str = "running"
    """running, published, discarded (another writer published first), abandoned (close), failed."""
    version: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("freeze_ms", "build_s", "publish_ms"):
            out[key] = round(out[key], 3)
        return out


@dataclass(frozen=True)
class _Frozen:
    """The state at one journal position (`seq` entries, `offset` bytes of the journal of
    `snapshot`, "" for a new catalog), held still so that a snapshot of it can be written
    while writes go on."""

    snapshot: str
    seq: int
    offset: int
    items: Mapping[str, ItemRecord]
    retriever: FrozenRetriever
    kind: str
    item_format: str
    title_words: int


class _Abandoned(Exception):
    """A background compaction stopped by :meth:`LiveCatalog.close`."""


def _default_loader(folder: Path) -> Retriever:
    from glossrec.retrieve import load_retriever

    return load_retriever(folder)


def catalog_versions(folder: str | Path) -> Versions:
    """The live catalog's versions: CATALOG names the current catalog-NNNNNN folder."""
    return Versions(Path(folder), POINTER, "catalog-", json_pointer=False, what="catalog",
                    hint="; create one with `glossrec index`")


def is_live_catalog(folder: str | Path) -> bool:
    return (Path(folder) / POINTER).is_file()


class LiveCatalog:
    """Items + retriever that change while serving; every change is persisted before it returns.

    Thread-safe: one re-entrant lock guards the in-memory state (searches hold it too, so a
    search never sees a half-applied change); an fcntl lock serialises writers across processes.
    A compaction builds its snapshot in a background thread holding neither (module docstring).
    """

    background = True
    """Compact in a background thread; False: in the write that reaches ``journal_limit``."""

    def __init__(self, folder: Path, items: dict[str, ItemRecord], retriever: Retriever,
                 formatter: Catalog, version: str, loader: RetrieverLoader,
                 journal_limit: int | None = None) -> None:
        self.folder = folder
        self._items = items
        self.retriever = retriever
        self.formatter = formatter
        self.snapshot = version
        """The version folder (catalog-NNNNNN) this state was loaded from."""
        self.seq = 0
        """Journal entries of that folder applied on top of it."""
        self._offset = 0
        """Bytes of its journal read so far."""
        self.journal_limit = journal_limit
        """Writes journaled before the next snapshot (compaction); None: one per 1,000 items,
        so a write costs O(change) plus an amortised O(1,000 items) share of a snapshot."""
        self._loader = loader
        self._lock = threading.RLock()
        self._pos: dict[str, int] | None = None
        self._folded: tuple[str, list[tuple[str, ItemRecord]]] | None = None
        """(version, casefolded title + record per item): the title search's table."""
        self._compactor: threading.Thread | None = None
        self._stop = threading.Event()
        """Set by close(): a background compaction under way is abandoned."""
        self._closed = False
        self.compactions: deque[CompactionStats] = deque(maxlen=100)
        """The latest compactions, oldest first (benchmarks and /health read them)."""
        self.compaction_count = 0
        """Compactions started by this object."""
        self._check_consistent(full=True)

    @property
    def version(self) -> str:
        """The state's name: the snapshot, plus "+N" after N journaled writes."""
        return self.snapshot if self.seq == 0 else f"{self.snapshot}+{self.seq:06d}"

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, items: Sequence[ItemRecord], retriever: Retriever,
               item_format: str = "Title: {title}", title_words: int = 25,
               loader: RetrieverLoader | None = None, indexed: bool = False) -> LiveCatalog:
        """Index `items` with the (empty) `retriever` and persist the first version.

        ``indexed=True``: the retriever already holds exactly these items in this order (a
        pipeline that just scored with it): it is persisted as is, not encoded a second time.
        """
        folder = Path(folder)
        formatter = Catalog([], [], item_format=item_format, title_words=title_words)
        records: dict[str, ItemRecord] = {}
        for pos, rec in enumerate(items):
            problem = rec.problem()
            if problem:
                raise DataError(f"item {pos}: {problem[1]}", None, None, problem[0])
            if rec.item_id in records:
                raise DataError(f"duplicate item_id {rec.item_id!r}", None, None, "item_id")
            records[rec.item_id] = rec
        ids = list(records)
        if not indexed:
            retriever.index(ids, [formatter.format_item(r.title, dict(r.attrs)) for r in records.values()])
        elif list(retriever.ids) != ids:
            raise ValueError("indexed=True but the retriever holds other items than `items`")
        folder.mkdir(parents=True, exist_ok=True)
        cat = cls(folder, records, retriever, formatter, "", loader or _default_loader)
        with cat._writer_locks():
            cat._compact_locked(record=False)  # from "": replaces whatever the folder held
        return cat

    @classmethod
    def from_catalog(cls, folder: str | Path, catalog: Catalog, retriever: Retriever,
                     loader: RetrieverLoader | None = None, indexed: bool = False) -> LiveCatalog:
        """A live catalog seeded from a dataset's :class:`Catalog` (same item text)."""
        records = [ItemRecord(i, t, a) for i, t, a in zip(catalog.ids, catalog.titles, catalog.attrs)]
        return cls.create(folder, records, retriever, catalog.item_format, catalog.title_words,
                          loader, indexed)

    @classmethod
    def open(cls, folder: str | Path, loader: RetrieverLoader | None = None,
             journal_limit: int | None = None) -> LiveCatalog:
        folder = Path(folder)
        loader = loader or _default_loader
        items, retriever, formatter, version = cls._load_current(folder, loader)
        cat = cls(folder, items, retriever, formatter, version, loader, journal_limit)
        cat._catch_up()
        return cat

    @staticmethod
    def _read_pointer(folder: Path) -> str:
        return catalog_versions(folder).read_pointer()

    @classmethod
    def _load_current(cls, folder: Path, loader: RetrieverLoader
                      ) -> tuple[dict[str, ItemRecord], Retriever, Catalog, str]:
        # A concurrent writer may delete a version we just read the pointer of: re-read, retry.
        for attempt in range(5):
            name = cls._read_pointer(folder)
            try:
                return (*cls._load_version(folder / name, loader), name)  # type: ignore[return-value]
            except (DataError, FileNotFoundError, OSError):
                if attempt == 4 or cls._read_pointer(folder) == name:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _load_version(vdir: Path, loader: RetrieverLoader
                      ) -> tuple[dict[str, ItemRecord], Retriever, Catalog]:
        meta = read_json(vdir / "meta.json")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"not a {FORMAT} folder", vdir / "meta.json", None, "format")
        formatter = Catalog([], [], item_format=meta["item_format"], title_words=int(meta["title_words"]))
        items: dict[str, ItemRecord] = {}
        path = vdir / "items.jsonl"
        for line, obj in iter_jsonl(path):
            rec = ItemRecord.from_json(obj, path, line)
            items[rec.item_id] = rec
        if len(items) != meta.get("n_items"):
            raise DataError(f"{len(items)} items, meta.json says {meta.get('n_items')}", path)
        return items, loader(vdir / "retriever"), formatter

    def _check_consistent(self, full: bool = False) -> None:
        """Index and items in step: the counts always, every id when `full` (on load; a write
        checks only the count, so that it stays O(change))."""
        ids = self.retriever.ids
        if len(ids) != len(self._items) or (full and any(i not in self._items for i in ids)):
            raise DataError(f"retriever holds {len(ids)} items but the catalog {len(self._items)}"
                            " (index and items out of step)", self.folder)

    # ---- the journal: writes between snapshots -------------------------------------------------

    @property
    def _journal(self) -> Path:
        return self.folder / self.snapshot / JOURNAL

    def _read_journal(self) -> tuple[list[dict[str, Any]], int]:
        """Complete entries after the bytes already read, and the offset after the last one.

        A last line without its newline, or not JSON, is a write that was cut off (kill -9
        mid-append): never acknowledged, so it is ignored (and cut off by the next writer). A
        bad line followed by good ones is corruption: a DataError naming it."""
        path = self._journal
        try:
            with open(path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return [], self._offset
        entries: list[dict[str, Any]] = []
        offset = self._offset
        lines = data.split(b"\n")
        for n, raw in enumerate(lines[:-1]):  # the part after the last newline is incomplete
            try:
                entry = json.loads(raw)
                if not isinstance(entry, dict) or entry.get("seq") != self.seq + len(entries) + 1:
                    raise ValueError("out of sequence")
            except ValueError:
                if n == len(lines) - 2 and not lines[-1]:
                    break  # a cut-off last line
                raise DataError(f"corrupt journal entry ({raw[:80]!r})", path) from None
            entries.append(entry)
            offset += len(raw) + 1
        return entries, offset

    def _apply_entry(self, entry: dict[str, Any]) -> None:
        if entry["op"] == "add":
            recs = [ItemRecord.from_json(o, self._journal) for o in entry["items"]]
            self._apply_add({r.item_id: r for r in recs})
        elif entry["op"] == "remove":
            self._apply_remove(list(entry["ids"]))
        else:
            raise DataError(f"unknown journal op {entry['op']!r}", self._journal)

    def _catch_up(self) -> bool:
        """Apply journal entries other writers appended since this state was read."""
        entries, offset = self._read_journal()
        for entry in entries:
            self._apply_entry(entry)
            self.seq += 1
        self._offset = offset
        return bool(entries)

    def _append(self, entry: dict[str, Any]) -> None:
        """Append one entry (fsynced before the write returns); a cut-off tail is dropped first."""
        with open(self._journal, "ab") as f:
            if f.tell() > self._offset:
                f.truncate(self._offset)
            line = _journal_line(entry)
            half = len(line) // 2
            f.write(line[:half])
            f.flush()
            fault_point("journal")
            f.write(line[half:])
            f.flush()
            os.fsync(f.fileno())
        self._offset += len(line)

    # ---- reading ------------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[LiveCatalog]:
        """Hold the state still (a search and the mapping of its positions to ids)."""
        with self._lock:
            yield self

    def refresh(self) -> bool:
        """Catch up with writes of other processes: their journal entries, or a newer snapshot
        (reloaded); True if anything changed."""
        try:
            name = self._read_pointer(self.folder)
        except DataError:
            return False
        if name == self.snapshot and self._journal_size() <= self._offset:
            return False
        with self._lock:
            if self._read_pointer(self.folder) != self.snapshot:
                self._reload()
                return True
            return self._catch_up()

    def _journal_size(self) -> int:
        try:
            return self._journal.stat().st_size
        except FileNotFoundError:
            return 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def get(self, item_id: str) -> ItemRecord | None:
        return self._items.get(item_id)

    def text_of(self, rec: ItemRecord) -> str:
        return self.formatter.format_item(rec.title, dict(rec.attrs))

    def format_title(self, title: str) -> str:
        """The indexed text a free (unknown) item title would have."""
        return self.formatter.format_item(title)

    def positions(self, item_ids: Sequence[str]) -> np.ndarray:
        """Retriever positions of the ids the catalog holds (others are skipped), sorted and
        unique; call locked."""
        pos = self._positions()
        return np.asarray(sorted({pos[i] for i in item_ids if i in pos}), dtype=np.int64)

    def position_each(self, item_ids: Sequence[str]) -> np.ndarray:
        """The retriever position of each id, in order, -1 for an id the catalog does not hold
        (removed since a model was trained); call locked."""
        pos = self._positions()
        return np.asarray([pos.get(i, -1) for i in item_ids], dtype=np.int64)

    def _positions(self) -> dict[str, int]:
        if self._pos is None:
            self._pos = {iid: p for p, iid in enumerate(self.retriever.ids)}
        return self._pos

    def id_at(self, position: int) -> str:
        """The item id at a retriever position; call locked, with positions from this state."""
        return self.retriever.ids[position]

    def items(self) -> list[ItemRecord]:
        with self._lock:
            return list(self._items.values())

    def find(self, query: str, limit: int) -> tuple[list[ItemRecord], int]:
        """Items whose title holds every word of `query` (case-insensitive, any order, any
        part of a word: a type-ahead matches as the user types), best first, at most `limit`;
        and how many items matched in all. A blank query matches every item.

        Best first: an exact id, then titles that start with the query, then titles where it
        starts a word, then the others; shorter titles first within each. A linear scan over
        titles casefolded once per catalog version: a type-ahead wants substrings, which the
        retrieval index (whole words, or embeddings) does not answer.
        """
        q = " ".join(query.casefold().split())
        words = q.split(" ") if q else []
        with self._lock:
            if self._folded is None or self._folded[0] != self.version:
                self._folded = (self.version, [(r.title.casefold(), r) for r in self._items.values()])
            table = self._folded[1]
            exact = self._items.get(query.strip())
        hits = [(t, r) for t, r in table if all(w in t for w in words)]

        def rank(hit: tuple[str, ItemRecord]) -> tuple[int, int, str]:
            t, r = hit
            tier = 0 if r is exact else 1 if t.startswith(q) else 2 if f" {q}" in t else 3
            return tier, len(t), r.item_id

        if exact is not None and all(r is not exact for _, r in hits):
            hits.append((exact.title.casefold(), exact))
        return [r for _, r in heapq.nsmallest(limit, hits, key=rank)], len(hits)

    # ---- writing ------------------------------------------------------------------------------

    def add(self, records: Sequence[ItemRecord]) -> WriteResult:
        """Add or replace items; returns only after the new version is on disk."""
        new: dict[str, ItemRecord] = {}
        for pos, rec in enumerate(records):
            problem = rec.problem()
            if problem:
                raise DataError(f"item {pos}: {problem[1]}", None, None, problem[0])
            new[rec.item_id] = rec  # a later duplicate in one request wins
        if not new:
            raise DataError("no items to add")

        def apply() -> tuple[list[str], list[str], list[str]]:
            replaced = [i for i in new if i in self._items]
            added = [i for i in new if i not in self._items]
            self._apply_add(new)
            return added, replaced, []

        return self._write(lambda: None, apply,
                           {"op": "add", "items": [r.to_json() for r in new.values()]})

    def _apply_add(self, new: dict[str, ItemRecord]) -> None:
        before = len(self.retriever.ids)
        self.retriever.add(list(new), [self.text_of(r) for r in new.values()])
        self._items.update(new)
        if self._pos is not None:  # new items were appended: extend the map, O(change)
            ids = self.retriever.ids
            for p in range(before, len(ids)):
                self._pos[ids[p]] = p

    def _apply_remove(self, ids: list[str]) -> None:
        self.retriever.remove(ids)
        for i in ids:
            del self._items[i]
        self._pos = None  # positions after a removed item shift

    def remove(self, item_ids: Sequence[str]) -> WriteResult:
        """Remove items (all or none: unknown ids raise UnknownItemsError naming them)."""
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            raise DataError("no item ids to remove")

        def check() -> None:
            unknown = [i for i in ids if i not in self._items]
            if unknown:
                raise UnknownItemsError(unknown)
            if len(ids) == len(self._items):
                raise DataError("cannot remove every item: a catalog needs at least one")

        def apply() -> tuple[list[str], list[str], list[str]]:
            self._apply_remove(ids)
            return [], [], ids

        return self._write(check, apply, {"op": "remove", "ids": ids})

    def _limit(self) -> int:
        return self.journal_limit if self.journal_limit is not None else max(1, len(self._items) // 1000)

    def _write(self, check: Callable[[], None],
               apply: Callable[[], tuple[list[str], list[str], list[str]]],
               entry: dict[str, Any]) -> WriteResult:
        """Apply a change in memory and append it to the journal (fsynced) before returning,
        O(change); the write that brings the journal to `journal_limit` entries starts a
        compaction."""
        with self._writer_locks():
            self._sync_with_disk()  # another process may have written since: apply on top
            check()
            try:
                added, replaced, removed = apply()
                self._check_consistent()
                self._append({"seq": self.seq + 1, **entry})
                self.seq += 1
            except BaseException:
                # Roll the in-memory state back to what is on disk, then report the failure.
                self._reload()
                raise
            if self.seq >= self._limit():
                self._compact_due()
            return WriteResult(added, replaced, removed, self.version)

    def _sync_with_disk(self) -> None:
        """Follow other processes' writes (hold the locks): reload a newer snapshot, or apply
        the journal entries appended since."""
        if self._read_pointer(self.folder) != self.snapshot:
            self._reload()
        else:
            self._catch_up()

    def _reload(self) -> None:
        self._items, self.retriever, self.formatter, self.snapshot = self._load_current(
            self.folder, self._loader)
        self.seq, self._offset = 0, 0
        self._pos = None
        self._catch_up()

    @contextmanager
    def _writer_locks(self) -> Iterator[None]:
        """Both locks, in the order every writer takes them."""
        with self._lock, self._file_lock():
            yield

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # ---- compaction: the journal folded into a new snapshot ------------------------------------

    def compact(self) -> str:
        """Snapshot the current state now, in this thread, after any background compaction
        under way; returns the new version. Errors are raised (a write's own compaction only
        logs them: its write is in the journal either way)."""
        self.wait_compacted()
        with self._writer_locks():
            self._sync_with_disk()
            self._compact_locked()
            return self.version

    def wait_compacted(self, timeout: float | None = None) -> bool:
        """Wait for a background compaction under way; False if it still runs after `timeout`."""
        thread = self._compactor
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    @property
    def compacting(self) -> bool:
        """A background compaction is under way."""
        thread = self._compactor
        return thread is not None and thread.is_alive()

    def compaction_status(self) -> dict[str, Any]:
        """Journal length and limit, whether a compaction runs, and the latest one's figures."""
        last = self.compactions[-1] if self.compactions else None
        return {"journaled": self.seq, "journal_limit": self._limit(), "running": self.compacting,
                "started": self.compaction_count, "last": None if last is None else last.to_json()}

    def close(self, wait: bool = False) -> None:
        """End background work: let a compaction under way publish (`wait`), or abandon it
        (its staged folder is removed; the journal holds every write, so nothing is lost).
        Writes after this compact in the write. Do not call it holding :meth:`locked`."""
        self._closed = True
        if not wait:
            self._stop.set()
        self.wait_compacted()

    def _compact_due(self) -> None:
        """The journal reached its limit (hold the locks): start a background compaction
        unless one runs; compact here when background compaction is off, the catalog is
        closed or the retriever has no frozen copy."""
        if self.compacting:
            return  # one at a time; the journal grows meanwhile and the next write retries
        stats: CompactionStats | None = None
        try:  # the write is in the journal: a compaction that fails is logged, not raised
            t0 = time.perf_counter()
            frozen = self.retriever.frozen() if self.background and not self._closed else None
            if frozen is None:
                self._compact_locked()
                return
            state = self._freeze(frozen, copy=True)
            stats = self._new_stats(background=True)
            stats.freeze_ms = (time.perf_counter() - t0) * 1000
            self._compactor = threading.Thread(target=self._compact_background,
                                               args=(state, stats), name="catalog-compact",
                                               daemon=True)
            self._compactor.start()
        except Exception:
            if stats is not None:
                stats.outcome = "failed"
            logger.exception("catalog compaction failed; the journal holds every write")

    def _new_stats(self, background: bool, record: bool = True) -> CompactionStats:
        """A compaction's stats from now; `record`: counted in :attr:`compactions`."""
        stats = CompactionStats(background, items=len(self._items), folded=self.seq)
        if record:
            self.compactions.append(stats)
            self.compaction_count += 1
        return stats

    def _freeze(self, retriever: FrozenRetriever, copy: bool) -> _Frozen:
        """The state at this journal position (hold the locks); `copy`: the items dict copied,
        so that later writes leave it as it is (the retriever's copy is the caller's)."""
        return _Frozen(self.snapshot, self.seq, self._offset,
                       dict(self._items) if copy else self._items, retriever,
                       getattr(self.retriever, "kind", "?"), self.formatter.item_format,
                       self.formatter.title_words)

    def _compact_locked(self, record: bool = True) -> None:
        """Snapshot the state holding the locks all along (the live objects, no copies);
        `record`: count it in :attr:`compactions` (create's first snapshot is not one)."""
        state = self._freeze(FrozenRetriever(self.retriever.ids, self.retriever.write), copy=False)
        stats = self._new_stats(background=False, record=record)
        try:
            self._build_and_publish(state, stats, None, announce=record)
        except BaseException:
            stats.outcome = "failed"
            raise

    def _compact_background(self, state: _Frozen, stats: CompactionStats) -> None:
        try:
            self._build_and_publish(state, stats, self._stop)
        except Exception:
            stats.outcome = "failed"
            logger.exception("background catalog compaction failed; the journal holds every write")

    def _build_and_publish(self, state: _Frozen, stats: CompactionStats,
                           cancel: threading.Event | None, announce: bool = True) -> None:
        """Build a snapshot of `state`, then publish it under the locks. `cancel` given: the
        background, which holds no lock while it builds; else the caller holds both.
        `announce`: log the compaction at INFO (a new catalog's first snapshot is not one)."""
        versions = catalog_versions(self.folder)
        t0 = time.perf_counter()
        try:
            staged = versions.stage(lambda tmp: self._write_snapshot(tmp, state, cancel))
        except _Abandoned:
            stats.outcome = "abandoned"
            return
        stats.build_s = time.perf_counter() - t0
        trash: list[Path] = []
        try:
            with self._writer_locks() if cancel is not None else nullcontext():
                t0 = time.perf_counter()
                self._publish(versions, staged, state, stats, cancel, trash)
                stats.publish_ms = (time.perf_counter() - t0) * 1000
        finally:
            versions.discard(staged)  # not published: dropped (published: nothing to do)
        versions.empty_trash(trash)  # the pruned old version, deleted after the locks
        if stats.outcome == "published":
            logger.log(logging.INFO if announce else logging.DEBUG, "catalog compaction: %s, %d items in %.1f s (%d writes carried over, "
                        "%.0f ms under the locks)", stats.version, stats.items, stats.build_s,
                        stats.tail, stats.publish_ms + stats.freeze_ms)

    def _publish(self, versions: Versions, staged: Staged, state: _Frozen,
                 stats: CompactionStats, cancel: threading.Event | None, trash: list[Path]) -> None:
        """Make the staged snapshot of `state` current (hold the locks), its journal the
        entries written since the freeze; discard it if the catalog moved to another snapshot
        meanwhile or the compaction was abandoned."""
        fresh = state.snapshot == ""  # create(): nothing to follow
        if cancel is not None and cancel.is_set():
            versions.discard(staged)
            stats.outcome = "abandoned"
            return
        if not fresh and (self._read_pointer(self.folder) != state.snapshot
                          or self.snapshot != state.snapshot):
            versions.discard(staged)  # another writer published first: its state wins
            stats.outcome = "discarded"
            logger.info("catalog compaction discarded: %s was replaced meanwhile", state.snapshot)
            return
        if not fresh:
            self._catch_up()  # entries other processes appended to the same journal
        tail = b"" if fresh else self._journal_tail(state)
        n_tail = self.seq - state.seq

        def finish(folder: Path, name: str) -> None:
            if tail:
                with atomic_write(folder / JOURNAL, "wb") as f:
                    f.write(tail)
            write_json(folder / "meta.json", {
                "format": FORMAT, "version": name, "retriever": state.kind,
                "n_items": len(state.retriever.ids), "item_format": state.item_format,
                "title_words": state.title_words, "written_at": time.time(),
            })

        try:
            path = versions.publish_staged(staged, finish, keep_previous=True, trash=trash)
        except BaseException:
            if not fresh:
                self._reload()  # the pointer may or may not have moved: follow the disk
            raise
        self.snapshot, self.seq, self._offset = path.name, n_tail, len(tail)
        stats.outcome, stats.tail, stats.version = "published", n_tail, path.name

    def _journal_tail(self, state: _Frozen) -> bytes:
        """The journal's entries after `state`'s position, renumbered from 1 for the new
        snapshot (hold the locks, caught up)."""
        if self.seq == state.seq:
            return b""
        with open(self._journal, "rb") as f:
            f.seek(state.offset)
            data = f.read(self._offset - state.offset)
        lines = data.split(b"\n")[:-1]
        if len(lines) != self.seq - state.seq:
            raise DataError(f"journal holds {len(lines)} entries after {state.seq}, expected "
                            f"{self.seq - state.seq}", self._journal)
        out = []
        for n, raw in enumerate(lines, start=1):
            entry = json.loads(raw)
            if entry.get("seq") != state.seq + n:
                raise DataError(f"journal entry out of sequence ({raw[:80]!r})", self._journal)
            entry["seq"] = n
            out.append(_journal_line(entry))
        return b"".join(out)

    @staticmethod
    def _write_snapshot(tmp: Path, state: _Frozen, cancel: threading.Event | None) -> None:
        """items.jsonl and the retriever's files of `state` (meta.json comes at publish, when
        the version's name is known). In the background it checks `cancel` and lets the
        serving threads have the GIL every 256 items."""
        ids = state.retriever.ids
        with atomic_write(tmp / "items.jsonl") as f:
            half = len(ids) // 2
            for n, iid in enumerate(ids):
                if n == half:
                    f.flush()
                    fault_point("items")
                if cancel is not None and n % 256 == 0:
                    if cancel.is_set():
                        raise _Abandoned()
                    yield_gil()
                f.write(_JSON.encode(state.items[iid].to_json()) + "\n")
        if cancel is not None and cancel.is_set():
            raise _Abandoned()
        (tmp / "retriever").mkdir()
        state.retriever.write(tmp / "retriever")


_JSON = json.JSONEncoder(ensure_ascii=False)
"""One encoder for every line: json.dumps with options builds a new one per call."""


def _journal_line(entry: Mapping[str, Any]) -> bytes:
    return (_JSON.encode(entry) + "\n").encode("utf-8")


def read_items_file(path: str | Path) -> list[ItemRecord]:
    """Items to add from a JSON-lines file ({"item_id", "title", ...}); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError("items file not found", path)
    out = [ItemRecord.from_json(obj, path, line) for line, obj in iter_jsonl(path)]
    if not out:
        raise DataError("no items (empty file)", path)
    return out
