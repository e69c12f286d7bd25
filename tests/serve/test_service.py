"""The real service (uvicorn subprocess): live catalog changes, restarts, kill -9 mid-write."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from glossrec.retrieve.live import POINTER, WRITE_DELAY_ENV, ItemRecord, LiveCatalog

from .conftest import TITLES, running, start_server, stop_server

KEY = "test-key-123"
AUTH = {"x-api-key": KEY}
NEW = {"item_id": "NEW-1", "title": "Himalayan pink salt body scrub with lavender"}


def _top(c: httpx.Client, history: list, k: int = 3) -> list[str]:
    r = c.post("/recommend", json={"history": history, "k": k})
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def test_new_item_is_recommended_at_once_without_restart(bm25_run: Path) -> None:
    with running(bm25_run, env={"GLOSSREC_API_KEY": KEY}) as srv, srv.client() as c:
        assert "NEW-1" not in _top(c, [{"title": NEW["title"]}], k=20)
        r = c.post("/items", json=NEW, headers=AUTH)
        assert r.status_code == 201 and r.json()["added"] == ["NEW-1"], r.text
        # A cold-start cart holding the new item's title...
        assert _top(c, [{"title": NEW["title"]}])[0] == "NEW-1"
        # ...and an id history whose last item has the same text as a newly added item.
        c.post("/items", json={"item_id": "TWIN", "title": TITLES["A7"]}, headers=AUTH)
        assert _top(c, ["A2", "A7"])[0] == "TWIN"
        assert c.get("/health").json()["items"] == len(TITLES) + 2


def test_added_item_survives_restart_and_removed_never_returns(bm25_run: Path) -> None:
    with running(bm25_run, env={"GLOSSREC_API_KEY": KEY}) as srv, srv.client() as c:
        assert c.post("/items", json=NEW, headers=AUTH).status_code == 201
    with running(bm25_run, env={"GLOSSREC_API_KEY": KEY}) as srv, srv.client() as c:
        assert c.get("/items/NEW-1").json()["title"] == NEW["title"]
        assert _top(c, [{"title": NEW["title"]}])[0] == "NEW-1"
        assert c.delete("/items/NEW-1", headers=AUTH).status_code == 200
        assert "NEW-1" not in _top(c, [{"title": NEW["title"]}], k=20)
        assert c.get("/items/NEW-1").status_code == 404
        r = c.post("/recommend", json={"history": ["NEW-1"]})
        assert r.status_code == 422 and r.json()["detail"] == {"unknown_ids": ["NEW-1"]}
    with running(bm25_run) as srv, srv.client() as c:
        assert "NEW-1" not in _top(c, [{"title": NEW["title"]}], k=20)
        assert c.get("/items/NEW-1").status_code == 404


def test_cli_writes_reach_a_running_service(bm25_run: Path) -> None:
    with running(bm25_run) as srv, srv.client() as c:
        other = LiveCatalog.open(bm25_run / "index")  # e.g. `glossrec items add` meanwhile
        other.add([ItemRecord("CLI-1", "Volcanic clay detox mask")])
        other.close(wait=True)
        assert _top(c, [{"title": "volcanic clay detox mask"}])[0] == "CLI-1"


def test_oversized_body_over_a_real_socket_then_serving_goes_on(bm25_run: Path) -> None:
    with running(bm25_run, "--max-body-bytes", "10000") as srv, srv.client() as c:
        big = b'{"history": ["A1"], "pad": "' + b"x" * 3_000_000 + b'"}'
        r = c.post("/recommend", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "too large" in r.json()["error"]
        assert _top(c, ["A2"])[0] == "A3"


def _kill_during_write(run: Path, phase: str) -> int | None:
    """Start a service that sleeps at fault point `phase`, add NEW-1, kill -9 the service
    there; returns the add's status (None: no answer before the kill)."""
    srv = start_server(run, env={"GLOSSREC_API_KEY": KEY, WRITE_DELAY_ENV: f"{phase}:60"})
    index = run / "index"
    before = (index / POINTER).read_text()
    journal = index / before.strip() / "journal.jsonl"
    size = journal.stat().st_size if journal.exists() else 0
    status: list[int] = []
    try:
        def post() -> None:
            try:
                status.append(httpx.post(srv.url + "/items", json=NEW, headers=AUTH, timeout=90).status_code)
            except httpx.HTTPError:
                pass  # the server dies under it

        t = threading.Thread(target=post, daemon=True)
        t.start()
        # Wait until the writer sleeps at the point: mid journal line, in the compaction's
        # staged folder (built in the background, after the write answered), or with the
        # compacted folder in place but not yet named by CATALOG.
        def there() -> bool:
            if phase == "journal":
                return journal.exists() and journal.stat().st_size > size
            return bool(list(index.glob(".stage-catalog-*" if phase == "items" else "catalog-000002")))

        deadline = time.monotonic() + 30
        while not there():
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        stop_server(srv, kill=True)  # kill -9 mid-write
    t.join(timeout=10)
    assert (index / POINTER).read_text() == before
    return status[0] if status else None


def test_kill_9_in_the_middle_of_a_catalog_write_keeps_every_acknowledged_write(bm25_run: Path) -> None:
    index = bm25_run / "index"
    # Mid journal line: the write was not acknowledged and is not there.
    assert _kill_during_write(bm25_run, "journal") is None
    cat = LiveCatalog.open(index)
    assert "NEW-1" not in cat and len(cat) == len(TITLES)
    # A 12-item catalog compacts at every write, in the background: the add was answered
    # before the kill, so the old snapshot's journal holds it.
    for phase in ("items", "publish"):
        assert _kill_during_write(bm25_run, phase) == 201
        cat = LiveCatalog.open(index)
        assert cat.get("NEW-1") is not None and len(cat) == len(TITLES) + 1
        assert cat.snapshot == "catalog-000001"
    # The restarted service serves that state and writes over the leftovers.
    with running(bm25_run, env={"GLOSSREC_API_KEY": KEY}) as srv, srv.client() as c:
        assert _top(c, ["A2"])[0] == "A3"
        assert _top(c, [{"title": NEW["title"]}])[0] == "NEW-1"
        assert c.post("/items", json={"item_id": "NEW-2", "title": "Jade face roller"},
                      headers=AUTH).status_code == 201
        deadline = time.monotonic() + 30
        while c.get("/health").json()["catalog_version"].startswith("catalog-000001"):
            assert time.monotonic() < deadline, srv.output()  # the background publish
            time.sleep(0.05)
    assert not list(index.glob(".tmp-*")) and not list(index.glob(".stage-*"))
    cat = LiveCatalog.open(index)
    assert cat.get("NEW-1") is not None and cat.get("NEW-2") is not None
