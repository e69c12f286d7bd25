"""What the web page stands on, without a browser: the page and its files, GET /items (the
type-ahead), provenance in /recommend, LM mode's texts, and GET /report."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from glossrec.config import RunConfig
from glossrec.serve import Recommender
from glossrec.serve.app import ServeSettings, create_app
from glossrec.retrieve.live import LiveCatalog

from .conftest import TITLES, FakeGenerator, scored_run

KEY = "page-key"


@pytest.fixture()
def client(word_catalog: LiveCatalog):
    app = create_app(Recommender(word_catalog), ServeSettings(api_key=SecretStr(KEY), max_title_chars=100))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_page_and_its_files_are_served_from_the_package(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    # Relative URLs only (the page works under a proxy prefix) and nothing from elsewhere.
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert refs and all(not re.match(r"^(https?:)?//|^/", u) for u in refs), refs
    static = resources.files("glossrec.serve") / "static"
    for name in ("app.js", "app.css", "favicon.svg"):
        got = client.get(f"/static/{name}")
        assert got.status_code == 200 and got.text == (static / name).read_text(encoding="utf-8")
    js = (static / "app.js").read_text(encoding="utf-8")
    # The key is never stored, and service text is never parsed as HTML.
    assert not re.search(r"localStorage|sessionStorage|document\.cookie|innerHTML|insertAdjacentHTML", js)
    assert client.get("/static/nope.js").json()["error"]  # errors stay JSON
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_items_search_is_the_type_ahead(client: TestClient) -> None:
    body = client.get("/items", params={"q": "argan DRY", "limit": 5}).json()
    assert [i["item_id"] for i in body["items"]] == ["A2", "A3"] and body["matches"] == 2
    assert body["items"][0] == {"item_id": "A2", "title": TITLES["A2"]} and body["query"] == "argan DRY"
    body = client.get("/items", params={"limit": 3}).json()
    assert len(body["items"]) == 3 and body["matches"] == len(TITLES)  # no query: any item
    assert client.get("/items", params={"q": "B3"}).json()["items"][0]["item_id"] == "B3"
    # An item added is found at once; a removed one is not.
    h = {"x-api-key": KEY}
    assert client.post("/items", headers=h, json={"item_id": "N1", "title": "Argan oil hair mask"}).status_code == 201
    assert [i["item_id"] for i in client.get("/items?q=argan").json()["items"]][0] == "N1"
    client.delete("/items/N1", headers=h)
    assert "N1" not in [i["item_id"] for i in client.get("/items?q=argan").json()["items"]]


@pytest.mark.parametrize("params, field", [
    ({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "ten"}, "limit"),
    ({"q": "x" * 101}, "q"),
])
def test_items_search_validation_is_the_apis(client: TestClient, params: dict, field: str) -> None:
    r = client.get("/items", params=params)
    body = r.json()
    assert r.status_code == 422 and set(body) == {"error", "detail"}
    assert body["error"].startswith(f"invalid request: query.{field}:")


def test_search_endpoint_is_documented(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/items"]["get"]
    params = {p["name"]: p["schema"] for p in op["parameters"]}
    assert params["limit"]["minimum"] == 1 and params["limit"]["maximum"] == 100
    assert params["q"]["maxLength"] == 100
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/ItemSearchOut") and "422" in op["responses"]
    assert "post" in schema["paths"]["/items"]  # adding items is still there
    item = schema["components"]["schemas"]["RecommendedItemOut"]["properties"]
    assert "sources" in item and "queries" in item


def test_health_tells_the_page_what_it_needs(client: TestClient) -> None:
    h = client.get("/health").json()
    assert h["components"] == ["lis"] and h["writes_need_key"] is True
    assert h["limits"]["max_title_chars"] == 100


def test_lm_mode_answers_with_the_texts_and_their_items(word_catalog: LiveCatalog) -> None:
    gen = FakeGenerator(["Title: argan oil shampoo", "Title: red lipstick"])
    app = create_app(Recommender(word_catalog, RunConfig(), generator=gen, mode="lm"))
    with TestClient(app) as c:
        body = c.post("/recommend", json={"history": ["A9"], "k": 4}).json()
        assert c.get("/health").json()["components"] == ["gloss"]
    assert body["mode"] == "lm" and body["queries"] == ["Title: argan oil shampoo", "Title: red lipstick"]
    ids = [i["item_id"] for i in body["items"]]
    assert {"A2", "A4"} <= set(ids)
    for item in body["items"]:
        assert item["sources"] == ["gloss"] and item["queries"] and set(item["queries"]) <= set(body["queries"])
    assert "Title: red lipstick" in body["items"][ids.index("A4")]["queries"]


def test_lm_mode_with_a_real_tiny_model_over_http(lm_run: Path) -> None:
    run = lm_run
    with TestClient(create_app(Recommender.from_run(run, mode="lm"))) as c:
        r = c.post("/recommend", json={"history": ["A2", {"title": "argan oil mask"}], "k": 3})
    body = r.json()
    assert r.status_code == 200 and body["mode"] == "lm" and 1 <= len(body["queries"]) <= 3
    for item in body["items"]:
        assert item["sources"] in (["gloss"], ["lis"])  # "lis": every text came out empty


# ---- the report view ------------------------------------------------------------------------


def test_report_shows_the_scores_with_the_reports_own_intervals(tmp_path: Path, word_catalog: LiveCatalog) -> None:
    run = tmp_path / "scored"
    scored_run(run)
    rec = Recommender(word_catalog)
    rec.run_dir = run
    with TestClient(create_app(rec)) as c:
        rep = c.get("/report").json()
        png = c.get("/report.png")
    assert rep["run"] == "scored" and rep["report_png"] is True
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert [(r["name"], r["folder"]) for r in rep["results"]] == [("GLoSS-bm25", "."), ("LIS-bm25", "lis-bm25")]
    md = (run / "report.md").read_text()
    for res in rep["results"]:
        m = {x["name"]: x for x in res["metrics"]}
        assert set(m) >= {"recall@5", "ndcg@10", "mrr@10"} and res["users"] == 60
        r5 = m["recall@5"]
        # the interval report.md prints for this result, to its 4 decimals
        assert f"- {res['name']}: {r5['mean']:.4f} [{r5['ci_low']:.4f}, {r5['ci_high']:.4f}]" in md
        assert all(x["ci_low"] <= x["mean"] <= x["ci_high"] for x in res["metrics"])
        assert {s["name"] for s in res["segments"]} == {"cold", "regular", "power"}


def test_report_of_a_run_never_scored(bm25_run: Path) -> None:
    with TestClient(create_app(Recommender.from_run(bm25_run))) as c:
        assert c.get("/report").json() == {"run": "run", "results": [], "report_png": False}
        r = c.get("/report.png")
    assert r.status_code == 404 and "report.png" in r.json()["error"]
