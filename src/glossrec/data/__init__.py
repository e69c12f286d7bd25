"""Datasets: a catalog of titled items and users' chronological item sequences.

The dataset folder format
-------------------------
A dataset is a folder with two files, each plain (``.jsonl``) or gzipped (``.jsonl.gz``) JSON
lines, UTF-8, one object per line (blank lines are ignored):

- ``items.jsonl[.gz]``: ``{"item_id": str, "title": str | null, ...other attributes}``.
  ``item_id`` is a non-empty string, unique in the file. ``title`` is the item's text as it is
  in the source (HTML entities kept); ``null``, an empty string or a missing ``title`` marks an
  untitled item. Any other keys (``brand``, ``categories``, ``price``, ...) are attributes that
  ``data.item_format`` may name (``"Title: {title} | Brand: {brand}"``).
- ``sequences.jsonl[.gz]``: ``{"user_id": str, "items": [item_id, ...]}``, one line per user
  (unique), items in chronological order, oldest first; every id must be in the items file
  (repeats are allowed: a user may buy an item twice).

This is the format of ``../shared/data/amazon2014/{beauty,toys,sports}``. The importers write it:
:mod:`glossrec.data.amazon` (raw Amazon 2014 review + metadata files, ``glossrec data import
amazon``), :mod:`glossrec.data.csv_import` (your own interactions + items CSV files, ``glossrec
data import csv``), and :mod:`glossrec.data.fetch` (``glossrec data fetch``) downloads the raw
Amazon files first. :mod:`glossrec.data.sample` draws a reproducible user sample of a folder.
See docs/data-format.md.

Loading applies the GLoSS protocol: items without a title are dropped from the catalog and from
every sequence (a counted, reported skip), and users left with no item are dropped. Users with
fewer than 3 items are kept here because the validation-user rule samples from them too
(:mod:`glossrec.splits` filters them). Anything else malformed (bad JSON, a truncated gzip file,
a missing or mistyped field, a duplicate id, an unknown item in a sequence, an empty file) is a
:class:`~glossrec.errors.DataError` naming the file, the line and the field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from glossrec.errors import ConfigError, DataError
from glossrec.io import iter_jsonl
from glossrec.progress import say

if TYPE_CHECKING:
    from glossrec.config import RunConfig

_WS = re.compile(r"\s+")

__all__ = ["Catalog", "Dataset", "LoadReport", "load_dataset", "load_data", "find_file", "clean_title"]


def clean_title(title: str, max_words: int = 25) -> str:
    """Collapse whitespace and keep the first `max_words` words (the reference preprocessing)."""
    return " ".join(_WS.split(title.strip())[:max_words])


class _FormatDict(dict):
    def __missing__(self, key: str) -> str:
        return ""


@dataclass
class Catalog:
    """Item ids <-> dense indices, and the one place where an item becomes text."""

    ids: list[str]
    titles: list[str]
    attrs: list[dict[str, Any]] = field(default_factory=list)
    item_format: str = "Title: {title}"
    title_words: int = 25

    def __post_init__(self) -> None:
        if not self.attrs:
            self.attrs = [{} for _ in self.ids]
        self.index: dict[str, int] = {iid: i for i, iid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.index

    def text(self, i: int) -> str:
        return self.format_item(self.titles[i], self.attrs[i])

    def format_item(self, title: str, attrs: dict[str, Any] | None = None) -> str:
        """Serialize one item; also used for free titles of items the catalog does not know."""
        values = _FormatDict({k: attr_text(v) for k, v in (attrs or {}).items()})
        values["title"] = clean_title(title, self.title_words)
        return self.item_format.format_map(values)

    def texts(self) -> list[str]:
        return [self.text(i) for i in range(len(self.ids))]

    def indices(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.index[i] for i in item_ids), dtype=np.int64, count=len(item_ids))


def attr_text(v: Any) -> str:
    """An item attribute as text (a list of lists is flattened and comma-joined)."""
    if isinstance(v, list):
        flat: list[str] = []
        for x in v:
            flat.extend(x if isinstance(x, list) else [x])
        return ", ".join(str(x) for x in flat)
    return "" if v is None else str(v)


@dataclass
class LoadReport:
    """What loading skipped under the GLoSS protocol, so nothing is dropped silently."""

    untitled_items: list[str] = field(default_factory=list)
    dropped_interactions: int = 0
    dropped_users: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.untitled_items:
            ex = ", ".join(self.untitled_items[:5])
            out.append(f"skipped {len(self.untitled_items)} items without a title ({ex}{', ...' if len(self.untitled_items) > 5 else ''})")
        if self.dropped_interactions:
            out.append(f"dropped {self.dropped_interactions} interactions with untitled items")
        if self.dropped_users:
            out.append(f"dropped {len(self.dropped_users)} users left with no titled item")
        return out


@dataclass
class Dataset:
    name: str
    catalog: Catalog
    users: list[str]
    sequences: list[np.ndarray]
    """Catalog indices per user, oldest first (int64)."""
    report: LoadReport = field(default_factory=LoadReport)
    path: Path | None = None

    def __post_init__(self) -> None:
        self.user_index = {u: i for i, u in enumerate(self.users)}

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def stats(self, min_length: int = 3) -> dict[str, float]:
        seqs = [s for s in self.sequences if len(s) >= min_length]
        n = sum(len(s) for s in seqs)
        return {"users": len(seqs), "items": len(self.catalog), "interactions": n,
                "mean_length": round(n / max(len(seqs), 1), 2)}


def find_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl.gz", f"{stem}.jsonl"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"no {stem}.jsonl or {stem}.jsonl.gz in this folder", folder)


def _require_str(obj: dict[str, Any], key: str, path: Path, line: int) -> str:
    if key not in obj:
        raise DataError("missing", path, line, key)
    v = obj[key]
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"must be a non-empty string, got {v!r}", path, line, key)
    return v


def load_dataset(path: str | Path, item_format: str = "Title: {title}",
                 title_words: int = 25) -> Dataset:
    """Load and validate a dataset folder; errors name the file, line and field."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError("dataset folder not found", folder)
    items_path = find_file(folder, "items")
    seq_path = find_file(folder, "sequences")
    report = LoadReport()

    ids: list[str] = []
    titles: list[str] = []
    attrs: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    untitled: set[str] = set()
    for line, obj in iter_jsonl(items_path):
        iid = _require_str(obj, "item_id", items_path, line)
        if iid in seen:
            raise DataError(f"duplicate item_id {iid!r} (first on line {seen[iid]})", items_path, line, "item_id")
        seen[iid] = line
        title = obj.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(f"must be a string or null, got {type(title).__name__}", items_path, line, "title")
        if title is None or not title.strip():
            # The paper drops untitled items: a counted, reported skip, not an error.
            untitled.add(iid)
            report.untitled_items.append(iid)
            continue
        ids.append(iid)
        titles.append(title)
        attrs.append({k: v for k, v in obj.items() if k not in ("item_id", "title")})
    if not ids and not untitled:
        raise DataError("no items (empty file)", items_path)
    if not ids:
        raise DataError("no item has a title", items_path)
    catalog = Catalog(ids, titles, attrs, item_format=item_format, title_words=title_words)

    users: list[str] = []
    seqs: list[np.ndarray] = []
    user_seen: dict[str, int] = {}
    index = catalog.index
    for line, obj in iter_jsonl(seq_path):
        uid = _require_str(obj, "user_id", seq_path, line)
        if uid in user_seen:
            raise DataError(f"duplicate user_id {uid!r} (first on line {user_seen[uid]})", seq_path, line, "user_id")
        user_seen[uid] = line
        if "items" not in obj:
            raise DataError("missing", seq_path, line, "items")
        items = obj["items"]
        if not isinstance(items, list):
            raise DataError(f"must be a list of item ids, got {type(items).__name__}", seq_path, line, "items")
        kept: list[int] = []
        for pos, iid in enumerate(items):
            if not isinstance(iid, str):
                raise DataError(f"item ids must be strings, got {type(iid).__name__} {iid!r} at "
                                f"position {pos}", seq_path, line, "items")
            j = index.get(iid)
            if j is not None:
                kept.append(j)
            elif iid in untitled:
                report.dropped_interactions += 1
            else:
                raise DataError(f"unknown item id {iid!r} at position {pos} (not in {items_path.name})",
                                seq_path, line, "items")
        if not kept:
            report.dropped_users.append(uid)
            continue
        users.append(uid)
        seqs.append(np.asarray(kept, dtype=np.int64))
    if not user_seen:
        raise DataError("no users (empty file)", seq_path)
    return Dataset(folder.name, catalog, users, seqs, report, folder)


NO_DATASET = "no dataset: data.path is not set; give --data DIR or set [data] path in the config"


def load_data(cfg: RunConfig, where: str | Path | None = None) -> Dataset:
    """The config's dataset ([data] path, item_format, title_words), its load report on the
    progress log: the one place a command, the pipeline or the service loads its dataset.

    `where` (the config file the settings came from) starts the error when data.path is unset.
    """
    if cfg.data.path is None:
        raise ConfigError(f"{where}: {NO_DATASET}" if where is not None else NO_DATASET)
    ds = load_dataset(cfg.data.path, cfg.data.item_format, cfg.data.title_words)
    for line in ds.report.lines():
        say(f"{ds.name}: {line}")
    return ds
