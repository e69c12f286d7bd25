"""Downloads against a loopback server on 127.0.0.1: fresh, resumed, restarted, interrupted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from glossrec.data.fetch import (FetchError, download, fetch_category, raw_file_names,
                                 resolve_category)
from glossrec.errors import ConfigError

PAYLOAD = os.urandom(300_000)


@pytest.fixture
def served(loopback):
    (loopback.root / "f.bin").write_bytes(PAYLOAD)
    return loopback


def test_resolve_category() -> None:
    assert resolve_category("beauty") == "Beauty"
    assert resolve_category("Toys") == "Toys_and_Games"
    assert resolve_category("sports_and_outdoors") == "Sports_and_Outdoors"
    assert raw_file_names("Beauty") == ("reviews_Beauty_5.json.gz", "meta_Beauty.json.gz")
    with pytest.raises(ConfigError, match="unknown category 'shoes'"):
        resolve_category("shoes")


def test_fresh_download(served, tmp_path: Path) -> None:
    dest = download(served.url + "f.bin", tmp_path / "dl" / "f.bin")
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("f.bin.part").exists()
    assert served.log.requests == [("/f.bin", None)]
    download(served.url + "f.bin", dest)  # present: no second request
    assert len(served.log.requests) == 1


def test_resumes_a_partial_download(served, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(PAYLOAD[:123_456])
    download(served.url + "f.bin", dest)
    assert served.log.requests == [("/f.bin", "bytes=123456-")]
    assert dest.read_bytes() == PAYLOAD


def test_restarts_when_server_ignores_ranges(served, tmp_path: Path) -> None:
    served.log.ranges = False
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"stale bytes of another file")
    download(served.url + "f.bin", dest)
    assert served.log.requests == [("/f.bin", "bytes=27-")]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_finished_on_416(served, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(PAYLOAD)
    download(served.url + "f.bin", dest)
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_download_keeps_part_and_resumes(served, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    served.log.cut_after = 100_000
    with pytest.raises(FetchError, match="run again to resume"):
        download(served.url + "f.bin", dest)
    part = dest.with_name("f.bin.part")
    assert part.read_bytes() == PAYLOAD[:100_000] and not dest.exists()
    served.log.cut_after = None
    download(served.url + "f.bin", dest)
    assert served.log.requests[-1] == ("/f.bin", "bytes=100000-")
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_http_errors_are_fetch_errors(served, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        download(served.url + "missing.bin", tmp_path / "m.bin")
    with pytest.raises(FetchError, match="cannot download"):
        download("http://127.0.0.1:9/none", tmp_path / "n.bin", timeout=2)
    assert not (tmp_path / "m.bin").exists()


def test_file_url(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in raw_file_names("Beauty"):
        (src / name).write_bytes(name.encode() * 10)
    reviews, meta = fetch_category("beauty", tmp_path / "raw", base_url=src.as_uri())
    assert reviews.name == "reviews_Beauty_5.json.gz" and meta.read_bytes() == b"meta_Beauty.json.gz" * 10


def test_fetch_category_over_http(loopback, amazon_raw, tmp_path: Path) -> None:
    reviews, meta = amazon_raw
    (loopback.root / "reviews_Toys_and_Games_5.json.gz").write_bytes(reviews.read_bytes())
    (loopback.root / "meta_Toys_and_Games.json.gz").write_bytes(meta.read_bytes())
    got = fetch_category("toys", tmp_path / "dl", base_url=loopback.url.rstrip("/"))
    assert [p.read_bytes() for p in got] == [reviews.read_bytes(), meta.read_bytes()]
    assert [r[0] for r in loopback.log.requests] == [
        "/reviews_Toys_and_Games_5.json.gz", "/meta_Toys_and_Games.json.gz"]
