"""LM mode with the shipped model's recipe (catalog-grounded, PMI-guided search with
prior_weight 1.0, glossrec's search loop), on the tiny random LM: requests that arrive together
are answered by ONE batched search, over HTTP as well as through the Python API."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from glossrec.config import ModelConfig
from glossrec.serve import Recommender, Request
from glossrec.serve.app import ServeSettings, create_app

from .conftest import TITLES, post_together, write_dataset

HISTORIES = [["A1", "A2"], ["A4"], ["A5", "A6"], ["B1"], ["B2", "A7"], ["A8"], ["A9", "A3"], ["B3"]]
CATALOG_TEXTS = {f"Title: {t}" for t in TITLES.values()}


@pytest.fixture()
def grounded_run(tmp_path: Path, tiny_model_config: ModelConfig) -> Path:
    """A servable run with the shipped config's generation recipe and batch size."""
    from glossrec.config import load_config
    from glossrec.rundir import RunDir

    cfg = load_config(None, {
        "data": {"path": str(write_dataset(tmp_path / "data"))},
        "model": tiny_model_config.model_dump(mode="json", exclude_none=True),
        "generate": {"num_beams": 3, "num_return": 3, "max_new_tokens": 6, "batch_size": 8,
                     "constrain": "catalog", "prior_weight": 1.0, "grounded_search": "glossrec"},
        "retrieve": {"retriever": "bm25"},
    })
    return RunDir(tmp_path / "run").write_config(cfg).parent


def test_a_batch_of_requests_is_one_grounded_search(grounded_run: Path,
                                                    searches: list[tuple[int, int]]) -> None:
    rec = Recommender.from_run(grounded_run, mode="lm")
    assert rec.config.generate.prior_weight == 1.0
    outs = rec.recommend_many([Request(h, 3) for h in HISTORIES[:5]] + [Request(["nope"], 3)])
    assert searches == [(5, 5)] and rec.generate_calls == 1  # the bad request is not searched
    for h, out in zip(HISTORIES, outs[:5]):
        assert not isinstance(out, Exception)
        held = {f"Title: {TITLES[i]}" for i in h}
        assert out.queries and set(out.queries) <= CATALOG_TEXTS - held


def test_concurrent_http_requests_share_one_grounded_search(
        grounded_run: Path, searches: list[tuple[int, int]],
        caplog: pytest.LogCaptureFixture) -> None:
    rec = Recommender.from_run(grounded_run, mode="lm")
    # The batch closes as soon as it is full (max_batch = generate.batch_size = 8), so a long
    # window costs nothing here and keeps a busy test machine from splitting the 8.
    app = create_app(rec, ServeSettings(batch_window_ms=30_000))
    with caplog.at_level(logging.DEBUG, logger="glossrec.serve.batching"):
        rs, health = asyncio.run(post_together(app, HISTORIES))
    assert [r.status_code for r in rs] == [200] * 8
    assert searches == [(8, 8)] and rec.generate_calls == 1
    assert health["batching"]["sizes"] == {"8": 1} and health["batching"]["max_batch"] == 8
    assert any(r.getMessage().startswith("batch of 8 request(s)") for r in caplog.records)
    for h, r in zip(HISTORIES, rs):  # each answer is its own request's
        held = {f"Title: {TITLES[i]}" for i in h}
        queries = set(r.json()["queries"])
        assert queries and queries <= CATALOG_TEXTS - held
        assert not {i["item_id"] for i in r.json()["items"]} & set(h)


def test_the_lm_default_window_follows_the_search_time(grounded_run: Path) -> None:
    rec = Recommender.from_run(grounded_run, mode="lm")
    batcher = create_app(rec, ServeSettings()).state.batcher
    assert batcher.current_window_s() == 0.015
    batcher.stats.record(8, 3.0)  # a batch's search took 3 s: wait up to 300 ms for the next
    assert batcher.current_window_s() == pytest.approx(0.3)
    lis = create_app(Recommender.from_run(grounded_run, mode="lis"), ServeSettings()).state.batcher
    lis.stats.record(8, 3.0)
    assert lis.current_window_s() == 0.0
