"""A hybrid run with the LM's list, served: a request generates texts for its history and fuses
them with LIS and the ID model, as `glossrec hybrid --generations ...` fused them offline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from glossrec.config import ModelConfig, RunConfig
from glossrec.io import write_jsonl
from glossrec.pipeline import prepare, run_baseline, run_hybrid
from glossrec.rundir import RunDir
from glossrec.serve import Recommender
from glossrec.serve.app import ServeSettings, create_app

from .conftest import post_together, write_dataset


@pytest.fixture()
def hybrid_run(tmp_path: Path, tiny_model_config: ModelConfig) -> Path:
    """A hybrid (LIS + the LM's texts + popularity) whose LM search is the shipped recipe's
    (grounded, prior_weight 1.0)."""
    data = write_dataset(tmp_path / "data")
    cfg = RunConfig(model=tiny_model_config).updated(
        data={"path": data}, split={"valid_fraction": 0.34},
        generate={"num_beams": 3, "num_return": 3, "max_new_tokens": 4, "constrain": "catalog",
                  "prior_weight": 1.0, "batch_size": 8},
        retrieve={"retriever": "bm25", "exclude_history": True},
        evaluate={"cutoffs": [5]},
        hybrid={"weights": {"lis": 4.0, "gloss": 1.0, "pop": 1.0}, "rrf_k": 10, "depth": 3})
    run_baseline(cfg, "pop", tmp_path / "pop")
    prep = prepare(cfg)
    gens = tmp_path / "texts.jsonl"
    write_jsonl(gens, ({"user_id": e.user_id, "texts": ["Title: Rose water facial toner spray"]}
                       for e in prep.examples))
    run_hybrid(cfg, [tmp_path / "pop"], tmp_path / "hybrid", generations={"test": gens})
    return tmp_path / "hybrid"


def test_serving_a_hybrid_run_with_the_lm(hybrid_run: Path) -> None:
    rec = Recommender.from_run(hybrid_run, mode="lm")
    assert rec.mode == "lm"
    out = rec.recommend(["A2", "A3"], k=6)
    assert len(out.items) == 6 and len({i.item_id for i in out.items}) == 6  # k is filled
    assert out.queries and rec.generate_calls == 1  # the LM wrote this request's texts
    by_component = {q for i in out.items for q in i.queries}
    assert "<pop>" in by_component and set(out.queries) <= by_component  # LM texts fused

    rec.add_items([{"item_id": "NEW", "title": "Argan oil hair mask for dry hair"}])
    fresh = rec.recommend(["A2", "A3"], k=6)
    assert "NEW" in [i.item_id for i in fresh.items]  # the ID model has never seen it
    rec.close()


def test_concurrent_hybrid_requests_share_one_grounded_search(
        hybrid_run: Path, searches: list[tuple[int, int]]) -> None:
    rec = Recommender.from_run(hybrid_run, mode="lm")
    histories = [["A2", "A3"], ["A4"], ["A7", "A8"], ["B1"]]
    # Closes when full (max_batch 4): the long window only keeps a busy machine from splitting.
    app = create_app(rec, ServeSettings(batch_window_ms=30_000, max_batch=4))
    rs, health = asyncio.run(post_together(app, histories, k=6))
    assert [r.status_code for r in rs] == [200] * 4
    assert searches == [(4, 4)] and rec.generate_calls == 1
    assert health["batching"]["sizes"] == {"4": 1}
    for r in rs:  # every answer fuses its own LM texts with the other components
        body = r.json()
        assert "gloss" in {s for i in body["items"] for s in i["sources"]}
        assert len(body["items"]) == 6
    rec.close()


def test_serving_an_interleaved_hybrid_of_lis_and_the_lm(tmp_path: Path,
                                                          tiny_model_config: ModelConfig) -> None:
    """No ID model: a run whose fixed fusion interleaves LIS and the LM is served as a hybrid
    of the two, places dealt as offline (LIS's first, then the LM's)."""
    data = write_dataset(tmp_path / "data")
    cfg = RunConfig(model=tiny_model_config).updated(
        data={"path": data}, split={"valid_fraction": 0.34},
        generate={"num_beams": 3, "num_return": 3, "max_new_tokens": 4, "constrain": "catalog",
                  "batch_size": 8},
        retrieve={"retriever": "bm25", "exclude_history": True}, evaluate={"cutoffs": [5]},
        hybrid={"fusion": "interleave", "slots": {"lis": 1, "gloss": 1}, "depth": 5})
    prep = prepare(cfg)
    gens = tmp_path / "texts.jsonl"
    write_jsonl(gens, ({"user_id": e.user_id, "texts": ["Title: Rose water facial toner spray"]}
                       for e in prep.examples))
    run_hybrid(cfg, [], tmp_path / "hybrid", generations={"test": gens})
    meta = json.loads(RunDir(tmp_path / "hybrid").metrics.read_text())
    assert meta["slots"] == {"lis": 1, "gloss": 1} and meta["components"] == ["lis", "gloss"]
    rec = Recommender.from_run(tmp_path / "hybrid", mode="lm")
    assert rec.hybrid and rec.components == ["lis", "gloss"]
    out = rec.recommend(["A2", "A3"], k=4)
    assert rec.generate_calls == 1 and len({i.item_id for i in out.items}) == len(out.items)
    lis_first = Recommender(rec.catalog).recommend(["A2", "A3"], k=1).items[0]
    assert out.items[0].item_id == lis_first.item_id and "lis" in out.items[0].sources
    assert "gloss" in out.items[1].sources  # the LM's best item not already listed
    assert set(out.queries) <= set(out.items[1].queries)  # its one list: found by all its texts
    assert [i.score for i in out.items] == [1 / r for r in range(1, len(out.items) + 1)]
    rec.close()
    plain = Recommender.from_run(tmp_path / "hybrid", mode="lis")  # LIS mode: LIS alone
    assert not plain.hybrid
    plain.close()


def test_row_labels_follow_the_components_rows() -> None:
    """The LM's rows are labelled one text each, or all of a user's texts where its rows are
    the user's one list (interleaving); LIS by the last item, a model by its name."""
    from types import SimpleNamespace

    import numpy as np

    from glossrec.hybrid import Lists
    from glossrec.serve.recommender import _row_labels

    todo = [SimpleNamespace(texts=["a", "b"], queries=["q1", "q2"]),
            SimpleNamespace(texts=["c"], queries=["q3"])]
    rows = np.zeros((3, 2), dtype=np.int64)
    per_text = Lists("gloss", rows, np.array([0, 2, 3]))
    assert _row_labels(per_text, todo) == [["q1"], ["q2"], ["q3"]]  # type: ignore[arg-type]
    one_list = Lists.one_per_user("gloss", rows[:2])
    assert _row_labels(one_list, todo) == [["q1", "q2"], ["q3"]]  # type: ignore[arg-type]
    assert _row_labels(Lists.one_per_user("lis", rows[:2]), todo) == [["b"], ["c"]]  # type: ignore[arg-type]
    assert _row_labels(Lists.one_per_user("pop", rows[:2]), todo) == [["<pop>"], ["<pop>"]]  # type: ignore[arg-type]
