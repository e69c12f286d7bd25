"""The HTTP layer in-process: validation, limits, auth, error format, batching."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from glossrec.config import RunConfig
from glossrec.serve import Recommender
from glossrec.serve.app import ServeSettings, create_app
from glossrec.retrieve.live import LiveCatalog

from .conftest import FakeGenerator

KEY = "s3cret-key"


@pytest.fixture()
def client(word_catalog: LiveCatalog):
    app = create_app(Recommender(word_catalog),
                     ServeSettings(api_key=SecretStr(KEY), max_body_bytes=4096, max_history=5,
                                   max_k=20, max_title_chars=100))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _ok(client: TestClient) -> None:
    """The service keeps serving after an error."""
    r = client.post("/recommend", json={"history": ["A2"], "k": 2})
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["item_id"] == "A3"


def _err(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str)
    assert "Traceback" not in r.text
    return body


def test_health_and_recommend(client: TestClient) -> None:
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["mode"] == "lis" and h["items"] == 12
    assert h["compaction"] == {"journaled": 0, "journal_limit": 1, "running": False,
                               "started": 0, "last": None}
    r = client.post("/recommend", json={"history": ["A9", {"item_id": "A2"}], "k": 3})
    body = r.json()
    assert r.status_code == 200 and body["mode"] == "lis" and len(body["items"]) == 3
    assert body["items"][0] == {"rank": 1, "item_id": "A3", "title": "Argan oil conditioner for dry hair",
                                "score": pytest.approx(body["items"][0]["score"]),
                                "queries": ["Title: Argan oil shampoo for dry hair"], "sources": ["lis"]}
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_malformed_json_is_400(client: TestClient) -> None:
    b = _err(client.post("/recommend", content=b'{"history": ["A1"', headers={"content-type": "application/json"}), 400)
    assert "malformed JSON" in b["error"]
    _ok(client)


@pytest.mark.parametrize("payload, field", [
    ({"history": "A1"}, "history"),
    ({"history": [1, 2]}, "history"),
    ({"history": ["A1"], "k": "10"}, "k"),
    ({"history": ["A1"], "k": 2.5}, "k"),
    ({"history": ["A1"], "exclude_history": "yes"}, "exclude_history"),
    ({"history": [{"item_id": "A1", "oops": 1}]}, "history"),
    ({"history": [{}]}, "history"),
    ({"hist": ["A1"]}, "history"),
    ([1, 2], "body"),
])
def test_wrong_types_are_422_naming_the_field(client: TestClient, payload: object, field: str) -> None:
    b = _err(client.post("/recommend", json=payload), 422)
    assert b["error"].startswith("invalid request") and field in b["error"]
    assert all({"field", "message"} == set(d) for d in b["detail"])
    _ok(client)


def test_empty_history_and_history_cap(client: TestClient) -> None:
    b = _err(client.post("/recommend", json={"history": []}), 422)
    assert "history" in b["error"] and "at least 1" in b["error"]
    b = _err(client.post("/recommend", json={"history": ["A1"] * 6}), 422)
    assert "history" in b["error"] and "at most 5" in b["error"]
    _ok(client)


@pytest.mark.parametrize("k", [0, -1, 21])
def test_k_out_of_range(client: TestClient, k: int) -> None:
    b = _err(client.post("/recommend", json={"history": ["A1"], "k": k}), 422)
    assert "k" in b["error"]
    _ok(client)


def test_unknown_history_ids_are_named(client: TestClient) -> None:
    b = _err(client.post("/recommend", json={"history": ["A1", "NOPE", "NADA"]}), 422)
    assert b["detail"] == {"unknown_ids": ["NOPE", "NADA"]} and "NOPE" in b["error"]
    _ok(client)


def test_oversized_bodies_are_413_before_parsing(client: TestClient) -> None:
    big = json.dumps({"history": ["A1"], "pad": "x" * 5000})
    b = _err(client.post("/recommend", content=big, headers={"content-type": "application/json"}), 413)
    assert "too large" in b["error"] and b["detail"] == {"limit_bytes": 4096}

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(10):
            yield b"x" * 1000

    _err(client.post("/recommend", content=chunks(), headers={"content-type": "application/json"}), 413)
    _ok(client)


def test_non_json_content_type_is_415(client: TestClient) -> None:
    b = _err(client.post("/recommend", content="history=A1",
                         headers={"content-type": "application/x-www-form-urlencoded"}), 415)
    assert "application/json" in b["error"]
    _ok(client)


def test_long_titles_are_rejected(client: TestClient) -> None:
    _err(client.post("/recommend", json={"history": [{"title": "x" * 101}]}), 422)
    _err(client.post("/items", json={"item_id": "N", "title": "x" * 101}, headers={"x-api-key": KEY}), 422)
    _ok(client)


def test_api_key_guards_writes_only(client: TestClient) -> None:
    item = {"item_id": "NEW", "title": "Lavender bath salts"}
    b = _err(client.post("/items", json=item), 401)
    assert "API key" in b["error"]
    _err(client.post("/items", json=item, headers={"x-api-key": "nope"}), 403)
    _err(client.delete("/items/A1", headers={"authorization": "Bearer nope"}), 403)
    _err(client.delete("/items/A1"), 401)
    r = client.post("/items", json=item, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 201 and r.json()["added"] == ["NEW"]
    assert client.get("/items/NEW").json()["title"] == "Lavender bath salts"  # reads are open
    _ok(client)


def test_items_crud(client: TestClient) -> None:
    h = {"x-api-key": KEY}
    r = client.post("/items", headers=h, json={"items": [
        {"item_id": "N1", "title": "Jade face roller"},
        {"item_id": "A1", "title": "Shea butter hand cream 8 oz", "attributes": {"brand": "B"}}]})
    assert r.status_code == 201 and r.json()["added"] == ["N1"] and r.json()["replaced"] == ["A1"]
    got = client.get("/items/A1").json()
    assert got == {"item_id": "A1", "title": "Shea butter hand cream 8 oz", "attributes": {"brand": "B"},
                   "text": "Title: Shea butter hand cream 8 oz"}
    top = client.post("/recommend", json={"history": [{"title": "jade roller face"}], "k": 1}).json()
    assert top["items"][0]["item_id"] == "N1"
    assert client.delete("/items/N1", headers=h).json()["removed"] == ["N1"]
    b = _err(client.get("/items/N1"), 404)
    assert b["detail"] == {"unknown_ids": ["N1"]}
    _err(client.delete("/items/N1", headers=h), 404)
    _err(client.post("/items", headers=h, json={"items": []}), 422)
    _err(client.post("/items", headers=h, json={"item_id": "X", "title": "t", "attributes": {"title": 1}}), 422)
    top = client.post("/recommend", json={"history": [{"title": "jade roller face"}], "k": 20}).json()
    assert "N1" not in [i["item_id"] for i in top["items"]]


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    _err(client.get("/nope"), 404)
    _err(client.get("/recommend"), 405)


def test_internal_errors_hide_the_trace(client: TestClient, monkeypatch) -> None:
    rec = client.app.state.recommender

    def boom(item_id: str) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(rec, "get_item", boom)
    b = _err(client.get("/items/A1"), 500)
    assert "secret" not in json.dumps(b)
    _ok(client)


def test_concurrent_lm_requests_are_batched_into_one_generate_call(word_catalog: LiveCatalog) -> None:
    gen = FakeGenerator(delay_s=0.05)
    rec = Recommender(word_catalog, RunConfig(), generator=gen, mode="lm")
    app = create_app(rec, ServeSettings(batch_window_ms=100, max_batch=8))

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            histories = [["A2"], ["A4"], ["A7"], ["A5"], ["B2"], ["A6"]]
            rs = await asyncio.gather(*(c.post("/recommend", json={"history": h, "k": 3}) for h in histories))
            health = (await c.get("/health")).json()
            await app.state.batcher.close()
            return list(rs) + [health]

    *rs, health = asyncio.run(main())
    assert all(r.status_code == 200 for r in rs)
    assert gen.calls == [6]
    assert health["batching"]["batches"] == 1 and health["generate_calls"] == 1
    # each response is its own user's: the echo generator predicts the last item again
    assert rs[0].json()["queries"][0] == "Title: Argan oil shampoo for dry hair"
    assert rs[1].json()["items"][0]["item_id"] != rs[0].json()["items"][0]["item_id"]


def test_item_ids_with_slashes_and_unicode_round_trip(client: TestClient) -> None:
    h = {"x-api-key": KEY}
    for iid in ("shop/42", "crème-1"):
        assert client.post("/items", headers=h, json={"item_id": iid, "title": "Odd id item"}).status_code == 201
        assert client.get(f"/items/{iid}").json()["item_id"] == iid
        assert client.delete(f"/items/{iid}", headers=h).status_code == 200
