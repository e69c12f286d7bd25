"""Import your own catalog: an interactions CSV and an items CSV -> the dataset folder format.

- interactions CSV: one row per (user, item, timestamp); column names are options (defaults
  ``user_id``, ``item_id``, ``timestamp``). A timestamp is a number (e.g. Unix seconds) or an
  ISO-8601 date/time (``2014-01-30`` or ``2014-01-30T12:00:00``; naive times are taken as UTC).
- items CSV: ``item_id`` (the same option as in the interactions file) and ``title`` columns;
  every other non-empty column is kept as an item attribute (a string), usable in
  ``data.item_format`` (e.g. ``"Title: {title} | Brand: {brand}"``).

Files may be gzipped (``.csv.gz``); ``.tsv`` files are tab-separated. The same preprocessing as
the Amazon importer applies (exact duplicate rows dropped, stable sort by time, untitled items
dropped, users with fewer than 3 items dropped). An interaction with an item that the items file
does not list is an error, not a skip: in your own catalog it means the two files disagree.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from glossrec.data.build import (ImportReport, Interaction, SourceItem, build_dataset,
                                 iter_text_lines, write_dataset)
from glossrec.errors import DataError

__all__ = ["CsvColumns", "read_items_csv", "read_interactions_csv", "import_csv", "parse_time",
           "export_csv"]


@dataclass(frozen=True)
class CsvColumns:
    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    title: str = "title"


def _delimiter(path: Path, delimiter: str | None) -> str:
    if delimiter:
        return delimiter
    name = path.name.lower().removesuffix(".gz")
    return "\t" if name.endswith(".tsv") else ","


def _rows(path: Path, required: list[str], delimiter: str | None
          ) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, {column: value}) for each record; ragged rows are errors naming the column."""
    lines = (text for _, text in iter_text_lines(path))
    reader = csv.reader(lines, delimiter=_delimiter(path, delimiter), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError("empty file (no header row)", path, 1)
        header = [h.strip() for h in header]
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        for col in required:
            if col not in header:
                raise DataError(f"no column {col!r} in the header (columns: {', '.join(header)})",
                                path, 1, col)
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < len(header):
                raise DataError(f"row has {len(row)} fields, the header {len(header)}",
                                path, line, header[len(row)])
            if len(row) > len(header):
                raise DataError(f"row has {len(row)} fields, the header only {len(header)}",
                                path, line, f"#{len(header) + 1}")
            yield line, dict(zip(header, row))
    except csv.Error as e:
        raise DataError(f"malformed CSV ({e})", path, reader.line_num) from None


def _nonempty(row: dict[str, str], col: str, path: Path, line: int) -> str:
    v = row[col].strip()
    if not v:
        raise DataError("must not be empty", path, line, col)
    return v


def parse_time(value: str) -> float | None:
    """Seconds as a float, from a number or an ISO-8601 date; None when it is neither."""
    v = value.strip()
    try:
        t = float(v)
        return t if math.isfinite(t) else None
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def read_items_csv(path: Path, cols: CsvColumns = CsvColumns(),
                   delimiter: str | None = None) -> dict[str, SourceItem]:
    path = Path(path)
    out: dict[str, SourceItem] = {}
    first: dict[str, int] = {}
    for line, row in _rows(path, [cols.item, cols.title], delimiter):
        iid = _nonempty(row, cols.item, path, line)
        if iid in first:
            raise DataError(f"duplicate item id {iid!r} (first on line {first[iid]})",
                            path, line, cols.item)
        first[iid] = line
        attrs = {k: v for k, v in row.items() if k not in (cols.item, cols.title) and v.strip()}
        out[iid] = SourceItem(iid, row[cols.title], attrs)
    if not out:
        raise DataError("no items (only a header, or an empty file)", path)
    return out


def read_interactions_csv(path: Path, items: dict[str, SourceItem],
                          cols: CsvColumns = CsvColumns(),
                          delimiter: str | None = None) -> list[Interaction]:
    path = Path(path)
    out: list[Interaction] = []
    for line, row in _rows(path, [cols.user, cols.item, cols.time], delimiter):
        user = _nonempty(row, cols.user, path, line)
        item = _nonempty(row, cols.item, path, line)
        raw_time = _nonempty(row, cols.time, path, line)
        t = parse_time(raw_time)
        if t is None:
            raise DataError(f"must be a number (e.g. Unix seconds) or an ISO-8601 date, got "
                            f"{raw_time!r}", path, line, cols.time)
        if item not in items:
            raise DataError(f"unknown item id {item!r} (not in the items file)", path, line,
                            cols.item)
        out.append(Interaction(user, item, t, (user, item, t)))
    if not out:
        raise DataError("no interactions (only a header, or an empty file)", path)
    return out


def import_csv(interactions: str | Path, items: str | Path, out: str | Path, *,
               columns: CsvColumns = CsvColumns(), delimiter: str | None = None,
               min_items: int = 3, title_words: int | None = 25) -> ImportReport:
    """Interactions CSV + items CSV -> dataset folder; returns what was kept and dropped."""
    interactions, items = Path(interactions), Path(items)
    records = read_items_csv(items, columns, delimiter)
    rows = read_interactions_csv(interactions, records, columns, delimiter)
    report = ImportReport(sources=[str(interactions), str(items)])
    built = build_dataset(rows, records, min_items=min_items, title_words=title_words,
                          report=report)
    write_dataset(built, Path(out))
    return built.report


def export_csv(data: str | Path, out: str | Path) -> tuple[Path, Path]:
    """A dataset folder -> ``OUT/interactions.csv`` + ``OUT/items.csv``, the files
    :func:`import_csv` reads (its default column names; attributes as extra item columns).

    A dataset folder keeps each user's items in order but no times, so the timestamp column is
    the item's position in the user's sequence (0, 1, 2, ...): importing the files again gives
    the same sequences. Both files are written to a temporary name, then renamed.
    """
    from glossrec.data import attr_text, load_dataset
    from glossrec.io import atomic_write

    ds = load_dataset(data)
    cat = ds.catalog
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    attr_cols = sorted({k for a in cat.attrs for k in a})

    def table(header: list[str], rows: Iterator[list[str]]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue()

    items = table(["item_id", "title", *attr_cols],
                  ([cat.ids[i], cat.titles[i], *(attr_text(cat.attrs[i].get(c, "")) for c in attr_cols)]
                   for i in range(len(cat))))
    inter = table(["user_id", "item_id", "timestamp"],
                  ([u, cat.ids[int(j)], str(pos)] for u, seq in zip(ds.users, ds.sequences)
                   for pos, j in enumerate(seq)))
    paths = out / "items.csv", out / "interactions.csv"
    for path, text in zip(paths, (items, inter)):
        with atomic_write(path) as f:
            f.write(text)
    return paths[1], paths[0]
