"""Crash-safe storage of retrievers: versioned folders, their metadata, items and arrays.

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

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.errors import DataError
from glossrec.io import atomic_write, fsync_path, read_json, write_json
from glossrec.retrieve.items import ItemTable

__all__ = [
    "save_versioned", "current_version", "read_meta", "write_meta", "open_saved", "write_items",
    "read_items", "write_array", "read_array", "CURRENT", "META", "FORMAT", "KINDS",
]

CURRENT = "CURRENT"
META = "retriever.json"
FORMAT = 1
KINDS = {"bm25": "BM25Retriever", "dense": "DenseRetriever", "faiss": "FaissRetriever"}
"""Saved kind (retriever.json "kind") -> the class that loads it."""
_VERSION_RE = re.compile(r"^v-(\d{6,})$")
_TMP_PREFIX = ".tmp-v-"


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
    if not isinstance(meta, dict) or meta.get("kind") not in KINDS:
        raise DataError(f"unknown retriever kind (known: {', '.join(KINDS)})", path, None, "kind")
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
