"""What every importer shares: the GLoSS preprocessing of raw interactions, and atomic output.

An importer parses its source (raw Amazon files, CSV, ...) into :class:`Interaction` rows in file
order and a title per item, then calls :func:`build_dataset`, which applies the paper's rules in
the paper's order, and :func:`write_dataset`, which writes the dataset folder format described in
:mod:`glossrec.data`. Everything is validated before the first byte is written, and each file is
written to a temporary name then renamed, so a bad input never leaves partial output.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Hashable

from tqdm import tqdm

from glossrec.data import clean_title
from glossrec.errors import DataError
from glossrec.io import atomic_dir, open_text

__all__ = [
    "Interaction", "SourceItem", "ImportReport", "BuiltDataset", "build_dataset", "write_dataset",
    "iter_text_lines", "StagedFiles", "write_folder",
]

REPORT_NAME = "import_report.json"


@dataclass(frozen=True)
class Interaction:
    """One raw row. `key` is what makes two rows exact duplicates (user, item, time, rating)."""

    user: str
    item: str
    time: float
    key: Hashable


@dataclass
class SourceItem:
    item_id: str
    title: str | None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportReport:
    """Counts of every row an importer dropped under the protocol, so nothing vanishes silently."""

    sources: list[str] = field(default_factory=list)
    rows: int = 0
    duplicate_rows: int = 0
    untitled_items: list[str] = field(default_factory=list)
    """Items dropped for an empty or missing title (or no metadata record at all)."""
    no_metadata_items: list[str] = field(default_factory=list)
    """The subset of `untitled_items` with no record in the items/metadata file."""
    untitled_interactions: int = 0
    short_users: int = 0
    """Users dropped for having fewer than `min_items` titled items left."""
    short_user_interactions: int = 0
    min_items: int = 3
    title_words: int | None = 25
    users: int = 0
    items: int = 0
    interactions: int = 0
    mean_length: float = 0.0

    def lines(self) -> list[str]:
        out = [f"read {self.rows} interactions from {', '.join(self.sources)}"]
        if self.duplicate_rows:
            out.append(f"dropped {self.duplicate_rows} exact duplicate rows")
        if self.untitled_items:
            ex = ", ".join(self.untitled_items[:5]) + (", ..." if len(self.untitled_items) > 5 else "")
            out.append(f"dropped {len(self.untitled_items)} items without a title ({ex}) "
                       f"and their {self.untitled_interactions} interactions")
        if self.no_metadata_items:
            out.append(f"  of which {len(self.no_metadata_items)} have no metadata record at all")
        if self.short_users:
            out.append(f"dropped {self.short_users} users with fewer than {self.min_items} titled "
                       f"items ({self.short_user_interactions} interactions)")
        out.append(f"wrote {self.users} users, {self.items} items, {self.interactions} "
                   f"interactions, mean length {self.mean_length:.2f}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuiltDataset:
    items: list[SourceItem]
    """Items some kept user touched, sorted by id."""
    sequences: list[tuple[str, list[str]]]
    """(user, items oldest first), users in order of their first row."""
    report: ImportReport


def build_dataset(rows: Iterable[Interaction], items: dict[str, SourceItem], *,
                  min_items: int = 3, title_words: int | None = 25,
                  report: ImportReport | None = None) -> BuiltDataset:
    """Apply the GLoSS preprocessing, in its order.

    Exact duplicate rows are dropped; rows are grouped by user (users in order of first
    appearance) and sorted by time, stably, so ties keep file order; items without a title
    (or absent from `items`) are dropped with their interactions; then users with fewer than
    `min_items` items left are dropped.
    """
    report = report or ImportReport()
    report.min_items, report.title_words = min_items, title_words
    seen: set[Hashable] = set()
    by_user: dict[str, list[tuple[float, str]]] = {}
    for r in rows:
        report.rows += 1
        if r.key in seen:
            report.duplicate_rows += 1
            continue
        seen.add(r.key)
        by_user.setdefault(r.user, []).append((r.time, r.item))

    titles: dict[str, str] = {}
    untitled: set[str] = set()
    for iid, rec in items.items():
        t = clean_title(rec.title, title_words or 10**9) if isinstance(rec.title, str) else ""
        if t:
            titles[iid] = t
        else:
            untitled.add(iid)

    sequences: list[tuple[str, list[str]]] = []
    used: set[str] = set()
    dropped_items: set[str] = set()
    for user, events in by_user.items():
        events.sort(key=lambda e: e[0])  # list.sort is stable: equal times keep file order
        kept = []
        for _, iid in events:
            if iid in titles:
                kept.append(iid)
            else:
                dropped_items.add(iid)
                report.untitled_interactions += 1
        if len(kept) < min_items:
            report.short_users += 1
            report.short_user_interactions += len(kept)
            continue
        sequences.append((user, kept))
        used.update(kept)
    report.untitled_items = sorted(dropped_items)
    report.no_metadata_items = sorted(i for i in dropped_items if i not in items)
    out_items = [SourceItem(iid, titles[iid], items[iid].attrs) for iid in sorted(used)]
    report.users = len(sequences)
    report.items = len(out_items)
    report.interactions = sum(len(s) for _, s in sequences)
    report.mean_length = round(report.interactions / max(report.users, 1), 2)
    return BuiltDataset(out_items, sequences, report)


class StagedFiles:
    """The files of one dataset folder, written into a temporary folder that then replaces the
    dataset folder in one step (glossrec.io.atomic_dir): a failure or a crash while writing the
    second file can never pair a new items file with an old sequences file."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def gz_lines(self, name: str, lines: Iterable[str]) -> None:
        """Gzip text lines reproducibly: no file name or time stamp in the gzip header."""
        with open(self.folder / name, "wb") as f:
            with gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
                for line in lines:
                    gz.write(line.encode("utf-8") if line.endswith("\n")
                             else (line + "\n").encode("utf-8"))

    def json(self, name: str, obj: Any) -> None:
        with open(self.folder / name, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)
            f.write("\n")


def write_folder(out: Path, fill: Callable[[StagedFiles], None]) -> Path:
    """Write a dataset folder all or nothing; files of an existing folder that `fill` does not
    write (a README) are kept."""
    return atomic_dir(Path(out), lambda tmp: fill(StagedFiles(tmp)), keep_others=True)


def _item_line(rec: SourceItem) -> str:
    return json.dumps({"item_id": rec.item_id, "title": rec.title, **rec.attrs}, ensure_ascii=False)


def write_dataset(built: BuiltDataset, out: Path) -> Path:
    """Write items.jsonl.gz, sequences.jsonl.gz and import_report.json into `out`."""
    if built.report.users == 0:
        raise DataError(f"no user has at least {built.report.min_items} titled items; nothing "
                        f"written (sources: {', '.join(built.report.sources)})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError("output exists and is not a folder", out)
    # Serialize first: a value JSON cannot hold must fail before anything is written.
    item_lines = [_item_line(r) for r in built.items]
    seq_lines = [json.dumps({"user_id": u, "items": s}, ensure_ascii=False)
                 for u, s in built.sequences]
    def fill(files: StagedFiles) -> None:
        files.gz_lines("items.jsonl.gz", item_lines)
        files.gz_lines("sequences.jsonl.gz", seq_lines)
        files.json(REPORT_NAME, built.report.to_dict())

    return write_folder(out, fill)


def iter_text_lines(path: Path, desc: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line) of a plain or gzipped text file; corrupt files name the line."""
    path = Path(path)
    lineno = 0
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(tqdm(f, desc=desc or path.name, unit=" lines",
                                               leave=False), start=1):
                yield lineno, line
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"truncated or corrupt file after line {lineno} ({e})", path,
                        lineno + 1) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason})", path, lineno + 1) from None
