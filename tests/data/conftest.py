"""Fixtures for the data tests: tiny raw Amazon / CSV files, dataset folders, a loopback server."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_AMAZON = REPO_ROOT / ".." / "shared" / "data" / "amazon2014"


def gz(src: Path, dest: Path) -> Path:
    with open(src, "rb") as f, gzip.open(dest, "wb") as g:
        shutil.copyfileobj(f, g)
    return dest


@pytest.fixture
def amazon_raw(tmp_path: Path) -> tuple[Path, Path]:
    """(reviews_Tiny_5.json.gz, meta_Tiny.json.gz), gzipped from tests/data/fixtures."""
    raw = tmp_path / "raw"
    raw.mkdir()
    return (gz(FIXTURES / "reviews_Tiny_5.json", raw / "reviews_Tiny_5.json.gz"),
            gz(FIXTURES / "meta_Tiny.json", raw / "meta_Tiny.json.gz"))


def write_dataset_files(folder: Path, items: list[dict] | str, sequences: list[dict] | str,
                        gzipped: bool = False) -> Path:
    """A dataset folder from objects (one JSON line each) or raw text."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, content in (("items", items), ("sequences", sequences)):
        text = content if isinstance(content, str) else "".join(json.dumps(o) + "\n" for o in content)
        if gzipped:
            with gzip.open(folder / f"{stem}.jsonl.gz", "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            (folder / f"{stem}.jsonl").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def make_dataset():
    """The write_dataset_files helper (importlib mode: tests cannot import conftest)."""
    return write_dataset_files


@pytest.fixture
def shared_amazon() -> Path:
    """../shared/data/amazon2014 beside the repository; skips the test when it is absent."""
    if not (SHARED_AMAZON / "beauty" / "sequences.jsonl.gz").is_file():
        pytest.skip(f"shared benchmark data not found at {SHARED_AMAZON}")
    return SHARED_AMAZON


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """8 users over 10 items (one untitled), gzipped like the shared benchmark folders."""
    items = [{"item_id": f"i{k}", "title": f"Item number {k}", "categories": [["X"]]}
             for k in range(10)]
    items[3]["title"] = None
    sequences = [{"user_id": f"u{u}", "items": [f"i{(u + j) % 10}" for j in range(3 + u % 3)]}
                 for u in range(8)]
    return write_dataset_files(tmp_path / "small", items, sequences, gzipped=True)


# ---- a loopback HTTP server with Range support (http.server's own handler has none) ----

@dataclass
class ServerLog:
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    """(path, Range header) per GET."""
    ranges: bool = True
    cut_after: int | None = None
    """Send only this many body bytes, then close (a dropped connection)."""


@dataclass
class Loopback:
    url: str
    root: Path
    log: ServerLog


def _handler(root: Path, log: ServerLog) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:  # noqa: N802
            rng = self.headers.get("Range")
            log.requests.append((self.path, rng))
            f = root / self.path.lstrip("/")
            if not f.is_file():
                self.send_error(404)
                return
            data = f.read_bytes()
            m = re.match(r"bytes=(\d+)-$", rng or "")
            if m and log.ranges:
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if log.cut_after is not None:
                self.wfile.write(body[:log.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[Loopback]:
    """An HTTP server on 127.0.0.1 serving tmp_path/www, recording each request."""
    root = tmp_path / "www"
    root.mkdir()
    log = ServerLog()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, log))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield Loopback(f"http://127.0.0.1:{server.server_address[1]}/", root, log)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
