"""A reproducible random sample of a dataset's users, with exactly the items they touch.

Lines are copied byte for byte (untitled items included), so loading the sample applies the
same rules as loading the full dataset; users and items keep their order in the source files.
The same source, size and seed give byte-identical files (gzip without name or time stamp).
Users are drawn with ``numpy.random.default_rng(seed).choice(n_users, size, replace=False)``
over the lines of the sequences file, then sorted back into file order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.data import find_file
from glossrec.data.build import StagedFiles, iter_text_lines, write_folder
from glossrec.errors import DataError
from glossrec.io import parse_json_object

__all__ = ["SampleReport", "sample_dataset"]

SAMPLE_INFO = "sample.json"


@dataclass
class SampleReport:
    source: str
    seed: int
    users: int
    source_users: int
    items: int
    source_items: int
    source_sha256: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json_lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, raw line, object) for each non-blank line."""
    for line, text in iter_text_lines(path):
        if text.strip():
            yield line, text, parse_json_object(text, path, line)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _user_items(obj: dict[str, Any], path: Path, line: int) -> list[str]:
    if "user_id" not in obj:
        raise DataError("missing", path, line, "user_id")
    items = obj.get("items")
    if items is None:
        raise DataError("missing", path, line, "items")
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise DataError("must be a list of item id strings", path, line, "items")
    return items


def sample_dataset(data: str | Path, n_users: int, seed: int, out: str | Path) -> SampleReport:
    """Write a sample of `n_users` users of the dataset folder `data` into `out`."""
    src = Path(data)
    if not src.is_dir():
        raise DataError("dataset folder not found", src)
    if n_users < 1:
        raise DataError(f"the sample needs at least 1 user, got {n_users}")
    seq_path, items_path = find_file(src, "sequences"), find_file(src, "items")

    seq_rows = list(_json_lines(seq_path))
    if not seq_rows:
        raise DataError("no users (empty file)", seq_path)
    if n_users > len(seq_rows):
        raise DataError(f"asked for {n_users} users but the file has only {len(seq_rows)}",
                        seq_path)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(seq_rows), size=n_users, replace=False))
    picked = [seq_rows[i] for i in chosen]
    needed: dict[str, tuple[int, str]] = {}  # item -> (line, field) of its first use, for errors
    for line, _, obj in picked:
        for iid in _user_items(obj, seq_path, line):
            needed.setdefault(iid, (line, "items"))

    item_lines: list[str] = []
    found: dict[str, int] = {}
    n_source_items = 0
    for line, text, obj in _json_lines(items_path):
        n_source_items += 1
        iid = obj.get("item_id")
        if not isinstance(iid, str):
            raise DataError("missing" if iid is None else "must be a string", items_path, line,
                            "item_id")
        if iid in needed:
            if iid in found:
                raise DataError(f"duplicate item_id {iid!r} (first on line {found[iid]})",
                                items_path, line, "item_id")
            found[iid] = line
            item_lines.append(text)
    missing = [iid for iid in needed if iid not in found]
    if missing:
        line, fld = needed[missing[0]]
        raise DataError(f"unknown item id {missing[0]!r} (not in {items_path.name}; "
                        f"{len(missing)} such items)", seq_path, line, fld)

    dst = Path(out)
    if dst.resolve() == src.resolve():
        raise DataError("the sample would overwrite its source; choose another --out", dst)
    report = SampleReport(
        source=str(data), seed=seed, users=n_users, source_users=len(seq_rows),
        items=len(item_lines), source_items=n_source_items,
        source_sha256={p.name: _sha256(p) for p in (items_path, seq_path)})
    def fill(files: StagedFiles) -> None:
        files.gz_lines("items.jsonl.gz", item_lines)
        files.gz_lines("sequences.jsonl.gz", [text for _, text, _ in picked])
        files.json(SAMPLE_INFO, report.to_dict())

    write_folder(dst, fill)
    return report
