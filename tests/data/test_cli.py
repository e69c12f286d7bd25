"""`glossrec data ...` commands end to end (typer's CliRunner; one real subprocess for errors)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from glossrec.cli import app
from glossrec.data import load_dataset

FIXTURES = Path(__file__).resolve().parent / "fixtures"
runner = CliRunner()


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_import_amazon_then_stats(amazon_raw, tmp_path: Path) -> None:
    reviews, meta = amazon_raw
    out = tmp_path / "ds"
    text = _ok(["data", "import", "amazon", "--reviews", str(reviews), "--meta", str(meta),
                "--out", str(out)])
    assert "dropped 1 exact duplicate rows" in text
    assert "dropped 2 users with fewer than 3 titled items" in text
    assert "wrote 3 users, 6 items, 12 interactions" in text
    stats = json.loads(_ok(["data", "stats", "--data", str(out), "--json"]))
    assert stats["users"] == 3 and stats["interactions"] == 12 and stats["mean_length"] == 4.0


def test_import_amazon_min_items_option(amazon_raw, tmp_path: Path) -> None:
    reviews, meta = amazon_raw
    _ok(["data", "import", "amazon", "--reviews", str(reviews), "--meta", str(meta),
         "--out", str(tmp_path / "ds"), "--min-items", "1", "--attr", "brand"])
    ds = load_dataset(tmp_path / "ds")
    assert len(ds.users) == 5
    assert ds.catalog.attrs[ds.catalog.index["B00A"]] == {"brand": "Acme"}


def test_import_csv(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    _ok(["data", "import", "csv", "--interactions", str(FIXTURES / "interactions.csv"),
         "--items", str(FIXTURES / "items.csv"), "--out", str(out), "--user-col", "customer",
         "--item-col", "product", "--time-col", "when", "--title-col", "name"])
    assert load_dataset(out).users == ["u1", "u2"]


def test_stats_reports_skips(small_dataset: Path) -> None:
    text = _ok(["data", "stats", "--data", str(small_dataset)])
    assert text.splitlines()[0].startswith("small: ")
    assert "skipped 1 items without a title (i3)" in text
    stats = json.loads(_ok(["data", "stats", "--data", str(small_dataset), "--json"]))
    assert stats["skipped"]["untitled_items"] == 1
    assert stats["users"] + stats["skipped"]["users_under_3_items"] == 8


def test_sample_is_reproducible(small_dataset: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        text = _ok(["data", "sample", "--data", str(small_dataset), "--users", "5", "--seed", "3",
                    "--out", str(tmp_path / name)])
    assert "sampled 5 of 8 users" in text
    for f in ("items.jsonl.gz", "sequences.jsonl.gz"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_fetch_downloads_and_imports(loopback, amazon_raw, tmp_path: Path) -> None:
    reviews, meta = amazon_raw
    (loopback.root / "reviews_Beauty_5.json.gz").write_bytes(reviews.read_bytes())
    (loopback.root / "meta_Beauty.json.gz").write_bytes(meta.read_bytes())
    out = tmp_path / "beauty"
    # A partial download from an earlier, interrupted run is resumed, not restarted.
    (out / "raw").mkdir(parents=True)
    (out / "raw" / "meta_Beauty.json.gz.part").write_bytes(meta.read_bytes()[:100])
    text = _ok(["data", "fetch", "beauty", "--out", str(out), "--base-url", loopback.url])
    assert "wrote 3 users" in text
    assert ("/meta_Beauty.json.gz", "bytes=100-") in loopback.log.requests
    assert (out / "raw" / "meta_Beauty.json.gz").read_bytes() == meta.read_bytes()
    assert load_dataset(out).users == ["U1", "U2", "U5"]


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    reviews = tmp_path / "reviews.json.gz"
    with gzip.open(reviews, "wt") as f:
        f.write('{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n')
    meta = tmp_path / "meta.json"
    meta.write_text("{'asin': 'a', 'title': 'A'}\n")
    proc = subprocess.run(
        [sys.executable, "-c", "from glossrec.cli import main; main()", "data", "import",
         "amazon", "--reviews", str(reviews), "--meta", str(meta), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"error: {reviews}, line 1, field 'overall': missing"
    assert "Traceback" not in proc.stderr
