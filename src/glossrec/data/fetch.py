"""Download the raw Amazon 2014 files of one category, resumably.

The files are served at ``http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/``
(``reviews_<Category>_5.json.gz`` and ``meta_<Category>.json.gz``). A download goes to
``<name>.part`` and is renamed only when complete; a ``.part`` left by an interrupted run is
resumed with an HTTP Range request (or restarted when the server ignores ranges). Any base URL
works (``http(s)://`` or ``file://``), which is how the tests serve fixtures from 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from glossrec.errors import ConfigError, GlossrecError

__all__ = ["DEFAULT_BASE_URL", "ALIASES", "CATEGORIES", "FetchError", "resolve_category",
           "raw_file_names", "download", "fetch_category"]

DEFAULT_BASE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"

ALIASES = {"beauty": "Beauty", "toys": "Toys_and_Games", "sports": "Sports_and_Outdoors"}

CATEGORIES: tuple[str, ...] = (
    "Books", "Electronics", "Movies_and_TV", "CDs_and_Vinyl", "Clothing_Shoes_and_Jewelry",
    "Home_and_Kitchen", "Kindle_Store", "Sports_and_Outdoors", "Cell_Phones_and_Accessories",
    "Health_and_Personal_Care", "Toys_and_Games", "Video_Games", "Tools_and_Home_Improvement",
    "Beauty", "Apps_for_Android", "Office_Products", "Pet_Supplies", "Automotive",
    "Grocery_and_Gourmet_Food", "Patio_Lawn_and_Garden", "Baby", "Digital_Music",
    "Musical_Instruments", "Amazon_Instant_Video",
)
"""The categories with a 5-core file in the 2014 release."""

_CHUNK = 1 << 16


class FetchError(GlossrecError):
    """A download failed; the partial file is kept so the next run resumes it."""


def resolve_category(name: str) -> str:
    """'beauty' -> 'Beauty'; full names match case-insensitively."""
    key = name.strip()
    if key.lower() in ALIASES:
        return ALIASES[key.lower()]
    for c in CATEGORIES:
        if c.lower() == key.lower():
            return c
    raise ConfigError(f"unknown category {name!r}: use beauty, toys, sports or one of "
                      f"{', '.join(CATEGORIES)}")


def raw_file_names(category: str) -> tuple[str, str]:
    """(reviews file, meta file) names of a resolved category."""
    return f"reviews_{category}_5.json.gz", f"meta_{category}.json.gz"


def _total_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _range_start(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(\d+)-", value or "")
    return int(m.group(1)) if m else None


def download(url: str, dest: Path, *, timeout: float = 60.0, force: bool = False) -> Path:
    """Fetch `url` to `dest` through `dest.part`, resuming a partial file; returns `dest`."""
    dest = Path(dest)
    if dest.exists() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if force:
        part.unlink(missing_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "glossrec"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            if _total_from_content_range(e.headers.get("Content-Range")) == offset:
                os.replace(part, dest)  # the previous run had everything but the rename
                return dest
            part.unlink()  # the partial file is longer than the remote one: start again
            return download(url, dest, timeout=timeout)
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, HTTPException, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"{url}: cannot download ({reason})") from None

    with resp:
        status = getattr(resp, "status", None)
        length = resp.headers.get("Content-Length")
        if offset and status == 206 and _range_start(resp.headers.get("Content-Range")) == offset:
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # no range support (or file://): the body is the whole file
        total = offset + int(length) if length and length.isdigit() else None
        try:
            with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B",
                                             unit_scale=True, unit_divisor=1024,
                                             desc=dest.name) as bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, HTTPException) as e:
            raise FetchError(f"{url}: download interrupted ({e}); run again to resume from "
                             f"{part}") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise FetchError(f"{url}: got {size} of {total} bytes; run again to resume from {part}")
    os.replace(part, dest)
    return dest


def fetch_category(category: str, raw_dir: str | Path, *, base_url: str = DEFAULT_BASE_URL,
                   force: bool = False, timeout: float = 60.0) -> tuple[Path, Path]:
    """Download both raw files of a category into `raw_dir`; returns (reviews, meta) paths."""
    cat = resolve_category(category)
    raw_dir = Path(raw_dir)
    base = base_url if base_url.endswith("/") else base_url + "/"
    paths = []
    for name in raw_file_names(cat):
        paths.append(download(base + name, raw_dir / name, timeout=timeout, force=force))
    return paths[0], paths[1]

