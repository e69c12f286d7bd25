"""Retrieval backends (BM25, dense, FAISS), their shared item bookkeeping and crash-safe storage.

Backends are imported lazily (``from glossrec.retrieve import DenseRetriever`` still works), so
``import glossrec.retrieve`` costs neither torch nor bm25s until a backend is used.

On-disk layout written by every backend's ``save(folder)``::

    folder/CURRENT           {"version": "v-000007"}: the one version a reader loads
    folder/v-000007/         retriever.json (kind, settings), ids.json, texts.json, *.npy

Why: ``save`` writes a complete new version under a temporary name, fsyncs it, renames it into
place, and only then replaces ``CURRENT`` (temp file + fsync + ``os.replace``); older versions are
deleted last. A crash at any moment (kill -9 included) leaves ``CURRENT`` naming a complete
version, the old one or the new one. Leftovers of a crashed save are swept by the next save.
One writer per folder at a time (callers serialise saves, as the live catalog does).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from glossrec.errors import DataError
from glossrec.io import atomic_write, fsync_path, read_json, write_json
from glossrec.retrieve.base import Retriever, topk

if TYPE_CHECKING:
    from glossrec.config import RetrieveConfig
    from glossrec.retrieve.bm25 import BM25Retriever
    from glossrec.retrieve.dense import DenseRetriever
    from glossrec.retrieve.faiss_index import FaissRetriever

__all__ = [
    "Retriever", "topk", "BM25Retriever", "DenseRetriever", "FaissRetriever",
    "build_retriever", "load_retriever", "ItemTable", "save_versioned", "current_version",
    "read_meta", "CURRENT", "META",
]

CURRENT = "CURRENT"
META = "retriever.json"
FORMAT = 1
_VERSION_RE = re.compile(r"^v-(\d{6,})$")
_TMP_PREFIX = ".tmp-v-"

_LAZY = {
    "BM25Retriever": "glossrec.retrieve.bm25",
    "DenseRetriever": "glossrec.retrieve.dense",
    "FaissRetriever": "glossrec.retrieve.faiss_index",
}
_KINDS = {"bm25": "BM25Retriever", "dense": "DenseRetriever", "faiss": "FaissRetriever"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- factories

def build_retriever(cfg: RetrieveConfig) -> Retriever:
    """An empty retriever configured by the ``[retrieve]`` section; call ``index`` next."""
    if cfg.retriever == "bm25":
        from glossrec.retrieve.bm25 import BM25Retriever

        return BM25Retriever(stopwords=cfg.bm25_stopwords, stemmer=cfg.bm25_stemmer,
                             method=cfg.bm25_method, k1=cfg.bm25_k1, b=cfg.bm25_b)
    device = cfg.encode_device
    if cfg.faiss:
        from glossrec.retrieve.faiss_index import FaissRetriever

        return FaissRetriever(encoder=cfg.encoder, e5_prefixes=cfg.e5_prefixes,
                              batch_size=cfg.encode_batch_size, device=device)
    from glossrec.retrieve.dense import DenseRetriever

    return DenseRetriever(encoder=cfg.encoder, e5_prefixes=cfg.e5_prefixes,
                          batch_size=cfg.encode_batch_size, device=device)


def load_retriever(folder: str | Path) -> Retriever:
    """Rebuild whichever backend saved `folder` (its kind is in retriever.json)."""
    folder = Path(folder)
    meta = read_meta(current_version(folder))
    cls = __getattr__(_KINDS[meta["kind"]])
    return cls.load(folder)


# --------------------------------------------------------------------------- item bookkeeping

@dataclass
class ItemTable:
    """Item ids and texts in position order: the bookkeeping every backend shares.

    Positions are what ``search`` returns. ``upsert`` keeps a replaced item's position and
    appends new ones; ``remove`` closes the gaps (later items move up), like ``np.delete``.
    """

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    pos: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.reset(self.ids, self.texts)

    def __len__(self) -> int:
        return len(self.ids)

    def reset(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        ids, texts = check_items(ids, texts)
        pos = {iid: p for p, iid in enumerate(ids)}
        if len(pos) != len(ids):
            dups = sorted({iid for p, iid in enumerate(ids) if pos[iid] != p})
            raise ValueError(f"duplicate item ids: {_names(dups)}")
        self.ids, self.texts, self.pos = ids, texts, pos

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """Positions of these ids; unknown ids raise KeyError naming them all."""
        missing = [i for i in ids if i not in self.pos]
        if missing:
            raise KeyError(f"unknown item ids: {_names(missing)}")
        return np.fromiter((self.pos[i] for i in ids), dtype=np.int64, count=len(ids))

    def upsert(self, ids: Sequence[str], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Write items; returns (which inputs were kept, their positions).

        An id repeated within one call keeps its last text. Positions >= the old length are new
        items, appended in input order.
        """
        ids, texts = check_items(ids, texts)
        keep = self.last_occurrences(ids)
        out = np.empty(len(keep), dtype=np.int64)
        for n, j in enumerate(keep.tolist()):
            iid = ids[j]
            p = self.pos.get(iid)
            if p is None:
                p = len(self.ids)
                self.pos[iid] = p
                self.ids.append(iid)
                self.texts.append(texts[j])
            else:
                self.texts[p] = texts[j]
            out[n] = p
        return keep, out

    @staticmethod
    def last_occurrences(ids: Sequence[str]) -> np.ndarray:
        """Indices of each id's last occurrence, ascending (what ``upsert`` keeps)."""
        last = {iid: j for j, iid in enumerate(ids)}
        return np.fromiter(sorted(last.values()), dtype=np.int64, count=len(last))

    def remove(self, ids: Sequence[str]) -> np.ndarray:
        """Delete items; returns the keep-mask over the old positions (for array rows)."""
        drop = self.positions(list(ids))
        keep = np.ones(len(self.ids), dtype=bool)
        keep[drop] = False
        self.reset([i for i, k in zip(self.ids, keep.tolist()) if k],
                   [t for t, k in zip(self.texts, keep.tolist()) if k])
        return keep


def check_items(ids: Sequence[str], texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """(ids, texts) as lists, checked to pair up and be strings."""
    ids, texts = list(ids), list(texts)
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
    bad = [i for i in ids if not isinstance(i, str)]
    if bad:
        raise TypeError(f"item ids must be strings, got {bad[:3]!r}")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("item texts must be strings")
    return ids, texts


def _names(ids: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def check_search_args(n_queries: int, k: int, exclude: Sequence[np.ndarray] | None) -> None:
    """Programming errors in search arguments fail loudly, before any work."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if exclude is not None and len(exclude) != n_queries:
        raise ValueError(f"exclude has {len(exclude)} rows for {n_queries} queries")


def rows_per_chunk(n_items: int, budget_bytes: int) -> int:
    """Query rows per dense float32 [rows, n_items] score block within the memory budget."""
    return max(1, min(4096, budget_bytes // max(4 * n_items, 1)))


# --------------------------------------------------------------------------- versioned storage

def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def _version_numbers(folder: Path) -> list[int]:
    return [int(m.group(1)) for p in folder.iterdir() if (m := _VERSION_RE.match(p.name))]


def _write_current(folder: Path, name: str) -> None:
    with atomic_write(folder / CURRENT) as f:
        json.dump({"version": name}, f)
        f.write("\n")
    fsync_path(folder)


def _prune(folder: Path, keep: str) -> None:
    """Delete every version but `keep`, and leftovers of crashed saves; best effort."""
    for p in folder.iterdir():
        if p.name == keep:
            continue
        if _VERSION_RE.match(p.name) or p.name.startswith(_TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(f".{CURRENT}.") and p.name.endswith(".tmp"):  # atomic_write's temp
            p.unlink(missing_ok=True)


def save_versioned(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Run `write(dir)` into a fresh version of `folder`, then publish it; returns its path.

    Steps (a crash between any two leaves the previous version current): write into
    ``.tmp-v-*``, fsync files and folder, rename to ``v-N``, fsync `folder`, replace
    ``CURRENT``, delete the other versions.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
        name = f"v-{max(_version_numbers(folder), default=0) + 1:06d}"
        os.rename(tmp, folder / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(folder)
    _write_current(folder, name)
    _prune(folder, name)
    return folder / name


def current_version(folder: str | Path, retries: int = 3) -> Path:
    """The version folder ``CURRENT`` names (retried if a concurrent save just replaced it)."""
    folder = Path(folder)
    pointer = folder / CURRENT
    for attempt in range(retries):
        if not pointer.is_file():
            if not folder.is_dir():
                raise DataError("retriever folder not found", folder)
            raise DataError(f"no saved retriever here (no {CURRENT} file)", folder)
        try:
            name = json.loads(pointer.read_text(encoding="utf-8"))["version"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError('not a version pointer (expected {"version": "v-NNNNNN"})', pointer) from None
        if not isinstance(name, str) or not _VERSION_RE.match(name):
            raise DataError(f"invalid version name {name!r}", pointer, None, "version")
        path = folder / name
        if path.is_dir():
            return path
        time.sleep(0.05 * (attempt + 1))
    raise DataError(f"{CURRENT} names {name!r}, which does not exist", pointer)


def read_meta(version: Path, kind: str | None = None) -> dict[str, Any]:
    """retriever.json of a version folder, checked for format and (optionally) kind."""
    path = version / META
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("kind") not in _KINDS:
        raise DataError(f"unknown retriever kind (known: {', '.join(_KINDS)})", path, None, "kind")
    if meta.get("format") != FORMAT:
        raise DataError(f"unsupported format {meta.get('format')!r} (this glossrec reads {FORMAT})",
                        path, None, "format")
    if kind is not None and meta["kind"] != kind:
        raise DataError(f"holds a {meta['kind']!r} retriever, not {kind!r} (use load_retriever)",
                        path, None, "kind")
    return meta


def open_saved(cls: Any, folder: Path) -> tuple[Any, Path, ItemTable]:
    """(an instance of `cls` with the saved settings, its version folder, its items)."""
    version = current_version(folder)
    meta = read_meta(version, cls.kind)
    try:
        r = cls(**meta["settings"])
    except TypeError as e:
        raise DataError(f"bad settings ({e})", version / META, None, "settings") from None
    return r, version, read_items(version, int(meta["n_items"]))


def write_meta(version: Path, kind: str, settings: dict[str, Any], n_items: int) -> None:
    write_json(version / META, {"format": FORMAT, "kind": kind, "n_items": n_items,
                                "settings": settings})


def write_items(version: Path, table: ItemTable) -> None:
    write_json(version / "ids.json", table.ids)
    write_json(version / "texts.json", table.texts)


def read_items(version: Path, n_items: int) -> ItemTable:
    out = []
    for name in ("ids.json", "texts.json"):
        path = version / name
        vals = read_json(path)
        if not isinstance(vals, list) or not all(isinstance(v, str) for v in vals):
            raise DataError("expected a JSON list of strings", path)
        if len(vals) != n_items:
            raise DataError(f"{len(vals)} entries, but {META} says {n_items} items", path)
        out.append(vals)
    try:
        return ItemTable(out[0], out[1])
    except ValueError as e:
        raise DataError(str(e), version / "ids.json") from None


def write_array(path: Path, arr: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)


def read_array(path: Path, dtype: np.dtype, ndim: int) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except ValueError as e:
        raise DataError(f"not a readable .npy array ({e})", path) from None
    if arr.dtype != dtype or arr.ndim != ndim:
        raise DataError(f"expected a {ndim}-d {np.dtype(dtype)} array, got {arr.ndim}-d {arr.dtype}", path)
    return np.ascontiguousarray(arr)
