"""The live catalog: item records and their retrieval index, persisted as one versioned folder.

Layout of ``RUN_DIR/index/`` (a service and the CLI may share it)::

    CATALOG                  one line: the name of the current version folder
    catalog-000007/
        meta.json            format, version, retriever kind, item format, item count
        items.jsonl          one {"item_id", "title", ...attributes} per item, in index order
        retriever/           Retriever.save() output
    .lock                    fcntl lock serialising writers across processes

Why: a write builds a complete new version under a temporary name, renames it into place, and
only then replaces ``CATALOG`` atomically (write temp file, fsync, rename). A crash at any
moment (kill -9 included) therefore leaves ``CATALOG`` naming a complete folder: the old state
or the new one, never a mix. Leftover temporary folders are swept by the next writer. Readers in
other processes notice a new pointer (:meth:`LiveCatalog.refresh`) and reload.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.data import Catalog
from glossrec.errors import DataError, GlossrecError
from glossrec.io import atomic_write, fsync_path, iter_jsonl, read_json, write_json
from glossrec.retrieve.base import Retriever

POINTER = "CATALOG"
FORMAT = "glossrec-live-catalog/1"
WRITE_DELAY_ENV = "GLOSSREC_TEST_CATALOG_WRITE_DELAY"
"""Test hook, "<phase>:<seconds>" with phase "items" (mid items.jsonl) or "publish" (new folder
in place, pointer not yet replaced): sleep there so a test can kill -9 the writer."""

_VERSION_RE = re.compile(r"^catalog-(\d{6,})$")
_TMP_PREFIX = ".tmp-catalog-"
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


def _test_delay(phase: str) -> None:
    spec = os.environ.get(WRITE_DELAY_ENV, "")
    if spec.startswith(phase + ":"):
        time.sleep(float(spec.split(":", 1)[1]))


def _default_loader(folder: Path) -> Retriever:
    from glossrec.retrieve import load_retriever

    return load_retriever(folder)


def _version_number(name: str) -> int:
    m = _VERSION_RE.match(name)
    return int(m.group(1)) if m else -1


def is_live_catalog(folder: str | Path) -> bool:
    return (Path(folder) / POINTER).is_file()


class LiveCatalog:
    """Items + retriever that change while serving; every change is persisted before it returns.

    Thread-safe: one re-entrant lock guards the in-memory state (searches hold it too, so a
    search never sees a half-applied change); an fcntl lock serialises writers across processes.
    """

    def __init__(self, folder: Path, items: dict[str, ItemRecord], retriever: Retriever,
                 formatter: Catalog, version: str, loader: RetrieverLoader) -> None:
        self.folder = folder
        self._items = items
        self.retriever = retriever
        self.formatter = formatter
        self.version = version
        self._loader = loader
        self._lock = threading.RLock()
        self._pos: dict[str, int] | None = None
        self._check_consistent()

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
        with cat._file_lock():
            cat.version = cat._write_version()
        return cat

    @classmethod
    def from_catalog(cls, folder: str | Path, catalog: Catalog, retriever: Retriever,
                     loader: RetrieverLoader | None = None, indexed: bool = False) -> LiveCatalog:
        """A live catalog seeded from a dataset's :class:`Catalog` (same item text)."""
        records = [ItemRecord(i, t, a) for i, t, a in zip(catalog.ids, catalog.titles, catalog.attrs)]
        return cls.create(folder, records, retriever, catalog.item_format, catalog.title_words,
                          loader, indexed)

    @classmethod
    def open(cls, folder: str | Path, loader: RetrieverLoader | None = None) -> LiveCatalog:
        folder = Path(folder)
        loader = loader or _default_loader
        items, retriever, formatter, version = cls._load_current(folder, loader)
        return cls(folder, items, retriever, formatter, version, loader)

    @staticmethod
    def _read_pointer(folder: Path) -> str:
        pointer = folder / POINTER
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise DataError("no live catalog here (missing CATALOG pointer); create one with "
                            "`glossrec index`", folder) from None
        if not _VERSION_RE.match(name):
            raise DataError(f"pointer names {name!r}, not a catalog version", pointer)
        return name

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

    def _check_consistent(self) -> None:
        ids = self.retriever.ids
        if len(ids) != len(self._items) or any(i not in self._items for i in ids):
            raise DataError(f"retriever holds {len(ids)} items but the catalog {len(self._items)}"
                            " (index and items out of step)", self.folder)

    # ---- reading ------------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[LiveCatalog]:
        """Hold the state still (a search and the mapping of its positions to ids)."""
        with self._lock:
            yield self

    def refresh(self) -> bool:
        """Reload when another process published a newer version; True if reloaded."""
        try:
            name = self._read_pointer(self.folder)
        except DataError:
            return False
        if name == self.version:
            return False
        with self._lock:
            if self._read_pointer(self.folder) == self.version:
                return False
            self._reload()
            return True

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
            self.retriever.add(list(new), [self.text_of(r) for r in new.values()])
            self._items.update(new)
            return added, replaced, []

        return self._write(lambda: None, apply)

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
            self.retriever.remove(ids)
            for i in ids:
                del self._items[i]
            return [], [], ids

        return self._write(check, apply)

    def _write(self, check: Callable[[], None],
               apply: Callable[[], tuple[list[str], list[str], list[str]]]) -> WriteResult:
        with self._lock, self._file_lock():
            # Another process may have published since we loaded: apply on top of its state.
            if self._read_pointer(self.folder) != self.version:
                self._reload()
            check()
            try:
                added, replaced, removed = apply()
                self._pos = None
                self._check_consistent()
                self.version = self._write_version()
            except BaseException:
                # Roll the in-memory state back to what is on disk, then report the failure.
                self._reload()
                raise
            return WriteResult(added, replaced, removed, self.version)

    def _reload(self) -> None:
        self._items, self.retriever, self.formatter, self.version = self._load_current(
            self.folder, self._loader)
        self._pos = None

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write_version(self) -> str:
        """Write the in-memory state as a new version and point CATALOG at it (hold the locks)."""
        previous = self.version
        self._sweep_tmp()
        existing = [_version_number(p.name) for p in self.folder.iterdir()]
        name = f"catalog-{max(existing + [0]) + 1:06d}"
        tmp = self.folder / f"{_TMP_PREFIX}{name}-{os.getpid()}"
        tmp.mkdir()
        try:
            self._write_files(tmp, name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_path(tmp)
        os.rename(tmp, self.folder / name)
        fsync_path(self.folder)
        _test_delay("publish")
        with atomic_write(self.folder / POINTER) as f:
            f.write(name + "\n")
        fsync_path(self.folder)
        self._prune({name, previous})
        return name

    def _write_files(self, tmp: Path, name: str) -> None:
        ids = list(self.retriever.ids)
        with atomic_write(tmp / "items.jsonl") as f:
            half = len(ids) // 2
            for n, iid in enumerate(ids):
                if n == half:
                    f.flush()
                    _test_delay("items")
                f.write(json.dumps(self._items[iid].to_json(), ensure_ascii=False) + "\n")
        self.retriever.save(tmp / "retriever")
        write_json(tmp / "meta.json", {
            "format": FORMAT, "version": name, "retriever": getattr(self.retriever, "kind", "?"),
            "n_items": len(ids), "item_format": self.formatter.item_format,
            "title_words": self.formatter.title_words, "written_at": time.time(),
        })

    def _sweep_tmp(self) -> None:
        # Only writers create these, and we hold the writer lock: any left are from a crash.
        for p in self.folder.glob(_TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)

    def _prune(self, keep: set[str]) -> None:
        """Delete versions other than the new one and the one it replaced (also unpublished
        folders a crash left between rename and pointer replace)."""
        for p in self.folder.iterdir():
            if _VERSION_RE.match(p.name) and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)


def read_items_file(path: str | Path) -> list[ItemRecord]:
    """Items to add from a JSON-lines file ({"item_id", "title", ...}); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError("items file not found", path)
    out = [ItemRecord.from_json(obj, path, line) for line, obj in iter_jsonl(path)]
    if not out:
        raise DataError("no items (empty file)", path)
    return out
