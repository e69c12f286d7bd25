"""Serving the hybrid: text lists and an ID model fused per request; new items through text."""

from __future__ import annotations

import numpy as np
import pytest

from glossrec.baselines.neighbours import Popularity
from glossrec.config import RunConfig
from glossrec.errors import ConfigError
from glossrec.serve import Recommender
from glossrec.retrieve.live import ItemRecord, LiveCatalog


def _pop(catalog: LiveCatalog, counts: dict[str, int]) -> tuple[Popularity, list[str]]:
    """A popularity model trained on the catalog as it is now (its ids are fixed at training)."""
    ids = [r.item_id for r in catalog.items()]
    model = Popularity(len(ids))
    model.counts = np.array([float(counts.get(i, 0)) for i in ids])
    return model, ids


def _cfg(weights: dict[str, float]) -> RunConfig:
    return RunConfig().updated(hybrid={"weights": weights, "rrf_k": 1, "depth": 20})


def test_model_list_and_text_list_are_fused(word_catalog: LiveCatalog) -> None:
    model, ids = _pop(word_catalog, {"B3": 100, "A3": 1})
    rec = Recommender(word_catalog, _cfg({"lis": 1.0, "pop": 1.0}), id_models=[(model, ids)])
    out = rec.recommend(["A2"], k=3)
    top = [i.item_id for i in out.items]
    # A3 is LIS's first hit (shampoo -> conditioner) and popularity's second: 1/2 + 1/3 beats
    # B3, popularity's first (1/2) that the text never finds.
    assert top[0] == "A3" and "B3" in top
    assert "<pop>" in out.items[0].queries and out.items[0].queries[0].startswith("Title:")
    # provenance: each item names the components whose lists hold it
    assert rec.components == ["lis", "pop"] and out.items[0].sources == ("lis", "pop")
    assert out.items[0].to_json()["sources"] == ["lis", "pop"]
    only_text = Recommender(word_catalog, _cfg({"lis": 1.0, "pop": 0.0}), id_models=[(model, ids)])
    assert only_text.components == ["lis"]
    assert all(i.sources == ("lis",) and "<pop>" not in i.queries  # weight 0: took no part
               for i in only_text.recommend(["A2"], k=3).items)
    lis = Recommender(word_catalog)
    assert ([i.item_id for i in only_text.recommend(["A2"], k=3).items]
            == [i.item_id for i in lis.recommend(["A2"], k=3).items])


def test_new_item_is_served_through_text_and_removed_items_drop_out(word_catalog: LiveCatalog) -> None:
    model, ids = _pop(word_catalog, {"A3": 100, "B3": 50})
    rec = Recommender(word_catalog, _cfg({"lis": 1.0, "pop": 1.0}), id_models=[(model, ids)])
    rec.add_items([ItemRecord("NEW", "Argan oil shampoo refill for dry hair")])
    out = rec.recommend(["A2"], k=4)
    got = [i.item_id for i in out.items]
    assert "NEW" in got  # the model has never seen it: the LIS list carries it
    assert all(i.queries != ("<pop>",) for i in out.items if i.item_id == "NEW")
    assert [i.sources for i in out.items if i.item_id == "NEW"] == [("lis",)]
    rec.remove_items(["A3"])
    assert "A3" not in [i.item_id for i in rec.recommend(["A2"], k=4).items]


def test_hybrid_needs_weights(word_catalog: LiveCatalog) -> None:
    model, ids = _pop(word_catalog, {})
    with pytest.raises(ConfigError, match="hybrid"):
        Recommender(word_catalog, RunConfig(), id_models=[(model, ids)])
