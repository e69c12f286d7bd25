"""Crash-safe storage of retrievers: versioned folders, their metadata, items and arrays.

A backend writes plain files into a folder it is given (``write(folder)``): retriever.json
(kind, settings), ids.json, texts.json, *.npy. ``save(folder)`` publishes them as a version of
`folder` through :class:`glossrec.io.Versions`, the project's one owner of versioned storage::

    folder/CURRENT           {"version": "v-000007"}: the one version a reader loads
    folder/v-000007/         the plain files

A crash at any moment (kill -9 included) leaves ``CURRENT`` naming a complete version, the old
one or the new one. The live catalog versions itself and has each backend ``write`` its plain
files into the catalog's version folder, so nothing is versioned (or fsynced) twice; ``load``
reads either layout. One writer per folder at a time (callers serialise saves).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.errors import DataError
from glossrec.io import Versions, atomic_write, read_json, write_json, write_json_strings
from glossrec.retrieve.items import ItemTable

__all__ = [
    "save_versioned", "current_version", "versions", "read_meta", "write_meta", "open_saved", "write_items",
    "read_items", "write_array", "read_array", "CURRENT", "META", "FORMAT", "KINDS",
]

CURRENT = "CURRENT"
META = "retriever.json"
FORMAT = 1
KINDS = {"bm25": "BM25Retriever", "dense": "DenseRetriever", "faiss": "FaissRetriever"}
"""Saved kind (retriever.json "kind") -> the class that loads it."""


def versions(folder: str | Path) -> Versions:
    """A retriever folder's versions (glossrec.io.Versions: the one versioned-storage owner)."""
    return Versions(Path(folder), CURRENT, "v-", json_pointer=True, what="retriever")


def save_versioned(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Run `write(dir)` into a fresh version of `folder`, then publish it; returns its path.
    A crash at any step leaves the previous version current (glossrec.io.Versions.publish)."""
    return versions(folder).publish(write)


def current_version(folder: str | Path, retries: int = 3) -> Path:
    """The version folder ``CURRENT`` names; a plain folder of retriever files (as a live
    catalog's version holds) is its own version."""
    folder = Path(folder)
    if not (folder / CURRENT).is_file() and (folder / META).is_file():
        return folder
    return versions(folder).current(retries)


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


def write_items(version: Path, ids: Sequence[str], texts: Sequence[str]) -> None:
    write_json_strings(version / "ids.json", ids)
    write_json_strings(version / "texts.json", texts)


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
