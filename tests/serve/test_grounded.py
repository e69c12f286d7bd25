"""Grounded LM mode: the generator's catalog trie follows the live catalog request by request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from glossrec.config import GenerateConfig, ModelConfig, RunConfig
from glossrec.errors import ConfigError
from glossrec.serve import Recommender
from glossrec.retrieve.live import ItemRecord, LiveCatalog

from .conftest import TITLES, FakeGenerator, WordRetriever


@pytest.fixture(params=[(0.0, False), (1.0, False), (1.0, True)],
                ids=["beams", "pmi-guided", "pmi-guided-table"])
def grounded_cfg(tiny_model_config: ModelConfig, request: pytest.FixtureRequest) -> RunConfig:
    """Plain grounded beams, and PMI-guided search (its prior follows the live trie too, as
    rows of the search or as a table)."""
    weight, table = request.param
    return RunConfig(model=tiny_model_config,
                     generate=GenerateConfig(num_beams=3, num_return=3, max_new_tokens=4,
                                             constrain="catalog", prior_weight=weight,
                                             prior_table=table))


@pytest.fixture()
def rec(word_catalog: LiveCatalog, grounded_cfg: RunConfig) -> Recommender:
    from glossrec.generate import make_generator

    gen = make_generator(grounded_cfg, None, catalog=[])
    return Recommender(word_catalog, grounded_cfg, gen, mode="lm", ranking="paper")


def _texts(rec: Recommender) -> set[str]:
    return {rec.catalog.text_of(r) for r in rec.catalog.items()}


def _all_but(catalog: LiveCatalog, keep: str) -> list[str]:
    return [r.item_id for r in catalog.items() if r.item_id != keep]


def test_queries_are_catalog_texts_outside_the_history(rec: Recommender) -> None:
    assert len(rec._trie.trie) == len(TITLES)  # type: ignore[union-attr]
    for history in (["A2", "A3"], ["A4", "A5", "A6"], ["B1"], ["A7", "A8", "B2", "B3"]):
        out = rec.recommend(history, k=5)
        assert out.queries and set(out.queries) <= _texts(rec)
        held = {rec.catalog.text_of(rec.catalog.get(i)) for i in history}  # type: ignore[arg-type]
        assert not set(out.queries) & held
        # Each query is one item's exact text, so retrieval finds that very item with it.
        found = {q for i in out.items for q in i.queries if q == f"Title: {i.title}"}
        assert found == set(out.queries)


def test_live_add_and_remove_reach_the_trie_by_the_next_request(rec: Recommender) -> None:
    new_text = "Title: Lavender bath salts with epsom"
    rec.add_items([{"item_id": "NEW", "title": "Lavender bath salts with epsom"}])
    # Every other item is history: the new item is the only one left to generate.
    out = rec.recommend(_all_but(rec.catalog, "NEW"), k=3)
    assert out.queries == [new_text] and out.items[0].item_id == "NEW"
    # Removed (positions shift): never generated again, and exclusions still hit the right items.
    rec.remove_items(["NEW", "A1"])
    out = rec.recommend(_all_but(rec.catalog, "A3"), k=3)
    assert out.queries == [rec.catalog.text_of(rec.catalog.get("A3"))]  # type: ignore[arg-type]
    for history in (["A2"], ["A4", "A5"], ["B3"]):
        assert new_text not in rec.recommend(history, k=3).queries
    # A replaced title: the old text is out, the new one in.
    rec.add_items([{"item_id": "A3", "title": "Argan oil conditioner travel size"}])
    out = rec.recommend(_all_but(rec.catalog, "A3"), k=3)
    assert out.queries == ["Title: Argan oil conditioner travel size"]
    trie = rec._trie.trie  # type: ignore[union-attr]
    assert "Title: Argan oil conditioner for dry hair" not in {trie.text(k) for k in trie.keys()}


def test_another_process_writes_are_followed(rec: Recommender) -> None:
    other = LiveCatalog.open(rec.catalog.folder, WordRetriever.load)
    other.add([ItemRecord("N1", "Jade roller")])
    out = rec.recommend(_all_but(other, "N1"), k=2)  # refresh, then sync, then generate
    assert out.queries == ["Title: Jade roller"]


def test_exclude_history_off_lets_history_items_back(rec: Recommender) -> None:
    from glossrec.serve import Request

    history = _all_but(rec.catalog, "A1")
    kept = rec.recommend_many([Request(history, 3, exclude_history=False)])[0]
    assert not isinstance(kept, Exception) and len(kept.queries) == 3
    assert rec.recommend(history, k=3).queries == ["Title: Shea butter hand cream 3 oz"]


def test_grounded_mode_needs_a_trie_and_fills_it_from_the_catalog(
        word_catalog: LiveCatalog, grounded_cfg: RunConfig) -> None:
    from glossrec.generate import make_generator

    with pytest.raises(ConfigError, match="trie"):
        Recommender(word_catalog, grounded_cfg, FakeGenerator(), mode="lm")
    gen: Any = make_generator(grounded_cfg, None, catalog=["Title: a stale item"])
    Recommender(word_catalog, grounded_cfg, gen, mode="lm")
    assert {gen.trie.text(k) for k in gen.trie.keys()} == {f"Title: {t}" for t in TITLES.values()}


def test_from_run_builds_a_grounded_generator(tmp_path: Path, grounded_cfg: RunConfig,
                                              dataset_dir: Path) -> None:
    from glossrec.rundir import RunDir

    cfg = grounded_cfg.model_copy(update={
        "data": grounded_cfg.data.model_copy(update={"path": dataset_dir}),
        "retrieve": grounded_cfg.retrieve.model_copy(update={"retriever": "bm25"})})
    run = RunDir(tmp_path / "run").write_config(cfg).parent
    rec: Any = Recommender.from_run(run, mode="lm")
    assert len(rec._trie.trie) == len(TITLES)
    out = rec.recommend(["A2", "A9"], k=3)
    assert out.queries and set(out.queries) <= {f"Title: {t}" for t in TITLES.values()}
