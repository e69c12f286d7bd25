"""Import the raw Amazon 2014 review files into the dataset folder format.

Inputs (McAuley et al., http://jmcauley.ucsd.edu/data/amazon/ , 2014 edition):

- ``reviews_<Category>_5.json.gz``: the 5-core reviews, one JSON object per line with
  ``reviewerID``, ``asin``, ``unixReviewTime`` and ``overall`` (other keys are ignored);
- ``meta_<Category>.json.gz``: item metadata, one *Python literal* dict per line (single quotes,
  not JSON), parsed with :func:`ast.literal_eval` (a JSON line is accepted as well), with
  ``asin``, ``title`` and optional ``brand``, ``categories``, ``price``, ...

Preprocessing is the GLoSS paper's (see :func:`glossrec.data.build.build_dataset`): exact
duplicate reviews (same user, item, time, rating) dropped; interactions grouped by user and
sorted by time, ties in file order; titles whitespace-collapsed and cut to their first 25 words
(HTML entities such as ``&amp;`` are kept as they are); items without a title dropped; users with
fewer than 3 items left dropped. Only metadata lines of items that some review mentions are
parsed, so a 250k-line category file costs seconds, not minutes.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from glossrec.data.build import (ImportReport, Interaction, SourceItem, build_dataset,
                                 iter_text_lines, write_dataset)
from glossrec.errors import DataError
from glossrec.io import iter_jsonl

__all__ = ["DEFAULT_ATTRIBUTES", "read_reviews", "read_amazon_meta", "import_amazon"]

DEFAULT_ATTRIBUTES: tuple[str, ...] = ("brand", "categories", "price")
"""Metadata kept beside the title (an extension: the paper uses the title only)."""

# Cheap pre-filter: the asin of a metadata line without parsing the whole literal.
_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"\\]+)['"]""")


def _str_field(obj: dict[str, Any], key: str, path: Path, line: int) -> str:
    if key not in obj:
        raise DataError("missing", path, line, key)
    v = obj[key]
    if not isinstance(v, str):
        raise DataError(f"must be a string, got {type(v).__name__} {v!r}", path, line, key)
    if not v.strip():
        raise DataError("must not be empty", path, line, key)
    return v


def _num_field(obj: dict[str, Any], key: str, path: Path, line: int) -> float:
    if key not in obj:
        raise DataError("missing", path, line, key)
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DataError(f"must be a number, got {type(v).__name__} {v!r}", path, line, key)
    return v


def read_reviews(path: Path) -> Iterator[Interaction]:
    """Reviews as interactions in file order; a malformed line is an error naming it."""
    path = Path(path)
    n = 0
    for line, obj in iter_jsonl(path):
        user = _str_field(obj, "reviewerID", path, line)
        item = _str_field(obj, "asin", path, line)
        time = _num_field(obj, "unixReviewTime", path, line)
        rating = _num_field(obj, "overall", path, line)
        n += 1
        yield Interaction(user, item, time, (user, item, time, rating))
    if n == 0:
        raise DataError("no reviews (empty file)", path)


def _parse_meta_line(text: str, path: Path, line: int) -> dict[str, Any]:
    try:
        obj = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        try:
            obj = json.loads(text)  # some mirrors re-encode the metadata as JSON
        except json.JSONDecodeError:
            msg = e.msg if isinstance(e, SyntaxError) else str(e)
            raise DataError(f"not a valid Python literal dict ({msg})", path, line) from None
    if not isinstance(obj, dict):
        raise DataError(f"expected a dict, got {type(obj).__name__}", path, line)
    return obj


def _json_safe(v: Any, path: Path, line: int, key: str) -> Any:
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError):
        raise DataError(f"value {v!r} cannot be stored as JSON", path, line, key) from None
    return v


def read_amazon_meta(path: Path, wanted: set[str] | None = None,
              attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> dict[str, SourceItem]:
    """Metadata records by asin; with `wanted`, lines of other items are skipped unparsed."""
    path = Path(path)
    out: dict[str, SourceItem] = {}
    first_line: dict[str, int] = {}
    nonblank = 0
    for line, text in iter_text_lines(path):
        if not text.strip():
            continue
        nonblank += 1
        if wanted is not None:
            m = _ASIN.search(text)
            if m is not None and m.group(1) not in wanted:
                continue
        obj = _parse_meta_line(text, path, line)
        asin = _str_field(obj, "asin", path, line)
        if wanted is not None and asin not in wanted:
            continue
        if asin in first_line:
            raise DataError(f"duplicate asin {asin!r} (first on line {first_line[asin]})",
                            path, line, "asin")
        first_line[asin] = line
        title = obj.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(f"must be a string, got {type(title).__name__} {title!r}",
                            path, line, "title")
        attrs = {k: _json_safe(obj[k], path, line, k) for k in attributes
                 if k in obj and k not in ("asin", "title")}
        out[asin] = SourceItem(asin, title, attrs)
    if nonblank == 0:
        raise DataError("no metadata (empty file)", path)
    return out


def import_amazon(reviews: str | Path, meta: str | Path, out: str | Path, *,
                  min_items: int = 3, title_words: int | None = 25,
                  attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> ImportReport:
    """Raw Amazon 2014 files -> dataset folder; returns what was kept and dropped."""
    reviews, meta = Path(reviews), Path(meta)
    rows = list(read_reviews(reviews))
    records = read_amazon_meta(meta, {r.item for r in rows}, attributes)
    report = ImportReport(sources=[str(reviews), str(meta)])
    built = build_dataset(rows, records, min_items=min_items, title_words=title_words,
                          report=report)
    write_dataset(built, Path(out))
    return built.report
