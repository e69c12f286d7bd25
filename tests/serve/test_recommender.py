from __future__ import annotations

import pytest

from glossrec.config import RunConfig
from glossrec.errors import DataError
from glossrec.serve import HistoryEntry, Recommender, Request, UnknownItemsError
from glossrec.retrieve.live import ItemRecord, LiveCatalog

from .conftest import FakeGenerator


def test_lis_by_id_excludes_history_by_default(word_catalog: LiveCatalog) -> None:
    rec = Recommender(word_catalog)
    out = rec.recommend(["A9", "A2"], k=3)
    assert rec.mode == "lis" and out.queries == ["Title: Argan oil shampoo for dry hair"]
    assert [i.item_id for i in out.items][0] == "A3"  # the conditioner, not the query item
    assert "A2" not in [i.item_id for i in out.items] and "A9" not in [i.item_id for i in out.items]
    assert [i.rank for i in out.items] == [1, 2, 3]
    assert out.items[0].queries == ("Title: Argan oil shampoo for dry hair",)
    kept = rec.recommend(["A2"], k=1, exclude_history=False)
    assert kept.items[0].item_id == "A2" and kept.items[0].score == pytest.approx(1.0)


def test_free_title_history_for_cold_start(word_catalog: LiveCatalog) -> None:
    rec = Recommender(word_catalog)
    out = rec.recommend([{"title": "red lipstick matte"}], k=2)
    assert out.items[0].item_id == "A4"
    # An id the catalog does not know falls back to its title.
    out = rec.recommend([HistoryEntry(item_id="foreign-9", title="black mascara")], k=1)
    assert out.items[0].item_id == "A5"


def test_unknown_ids_are_named_and_bad_histories_rejected(word_catalog: LiveCatalog) -> None:
    rec = Recommender(word_catalog)
    with pytest.raises(UnknownItemsError) as e:
        rec.recommend(["A1", "ZZ", "YY", "ZZ"])
    assert e.value.ids == ["ZZ", "YY"]
    with pytest.raises(DataError, match="empty"):
        rec.recommend([])
    with pytest.raises(DataError, match="item_id or a title"):
        rec.recommend([{}])
    with pytest.raises(DataError, match="unknown keys"):
        rec.recommend([{"id": "A1"}])
    with pytest.raises(DataError, match="k must"):
        rec.recommend(["A1"], k=0)


def test_added_item_is_recommended_next_and_removed_never_again(word_catalog: LiveCatalog) -> None:
    rec = Recommender(word_catalog)
    title = "Lavender bath salts with epsom"
    rec.add_items([{"item_id": "NEW", "title": title}])
    assert rec.recommend([{"title": title}], k=1).items[0].item_id == "NEW"
    rec.remove_items(["NEW"])
    for k in (1, 5, 20):
        assert "NEW" not in [i.item_id for i in rec.recommend([{"title": title}], k=k).items]
    with pytest.raises(UnknownItemsError):
        rec.recommend(["NEW"])


def test_k_larger_than_catalog_returns_what_there_is(word_catalog: LiveCatalog) -> None:
    out = Recommender(word_catalog).recommend(["A1"], k=50, exclude_history=False)
    assert len(out.items) == len(word_catalog)


def test_lm_mode_paper_ranking_and_query_attribution(word_catalog: LiveCatalog) -> None:
    gen = FakeGenerator(["Title: argan oil conditioner", "Title: vitamin c serum",
                         "Title: argan conditioner dry hair", ""])
    rec = Recommender(word_catalog, RunConfig(), generator=gen, mode="lm", ranking="paper")
    out = rec.recommend(["A2", "A9"], k=10)
    assert out.queries == ["Title: argan oil conditioner", "Title: vitamin c serum",
                           "Title: argan conditioner dry hair"]  # the empty text is dropped
    ids = [i.item_id for i in out.items]
    assert ids == ["A3", "A7"]  # paper rule: top-1 per text, an item hit twice counts once
    assert out.items[0].queries == ("Title: argan oil conditioner", "Title: argan conditioner dry hair")
    prompt = gen.prompts[0]
    assert prompt.endswith("### Next item:\n")
    assert "Title: Argan oil shampoo for dry hair\nTitle: Bamboo hair brush detangling" in prompt


def test_lm_mode_exclude_history_masks_generated_repeats(word_catalog: LiveCatalog) -> None:
    gen = FakeGenerator(["Title: Argan oil shampoo for dry hair"])
    rec = Recommender(word_catalog, RunConfig(), generator=gen, mode="lm")
    assert rec.recommend(["A2"], exclude_history=False).items[0].item_id == "A2"
    assert rec.recommend(["A2"], exclude_history=True).items[0].item_id == "A3"


def test_lm_mode_rrf_ranking_fills_k(word_catalog: LiveCatalog) -> None:
    gen = FakeGenerator(["Title: argan oil conditioner", "Title: face serum"])
    rec = Recommender(word_catalog, RunConfig(), generator=gen, mode="lm", ranking="rrf")
    out = rec.recommend(["A1"], k=6)
    assert len(out.items) == 6 and out.items[0].item_id in {"A3", "A7"}


def test_lm_mode_fills_k_by_default(word_catalog: LiveCatalog) -> None:
    gen = FakeGenerator(["Title: argan oil conditioner", "Title: face serum"])
    rec = Recommender(word_catalog, RunConfig(), generator=gen, mode="lm")
    out = rec.recommend(["A1"], k=10)
    ids = [i.item_id for i in out.items]
    assert rec.ranking == "rrf" and len(ids) == min(10, len(word_catalog) - 1) == len(set(ids))
    assert "A1" not in ids


def test_all_empty_generation_falls_back_to_last_item(word_catalog: LiveCatalog) -> None:
    rec = Recommender(word_catalog, RunConfig(), generator=FakeGenerator(["", "  "]), mode="lm")
    out = rec.recommend(["A4"], k=2)
    assert out.queries == ["Title: Matte red lipstick long lasting"]


def test_recommend_many_is_one_generate_call_with_per_request_errors(word_catalog: LiveCatalog) -> None:
    gen = FakeGenerator()
    rec = Recommender(word_catalog, RunConfig(), generator=gen, mode="lm", ranking="paper")
    outs = rec.recommend_many([Request(["A2"], 2), Request(["nope"]), Request(["A4"], 1, False)])
    assert gen.calls == [2]  # the bad request never reaches the model
    assert isinstance(outs[1], UnknownItemsError)
    assert outs[0].items[0].item_id == "A3" and len(outs[0].items) <= 2
    assert outs[2].items[0].item_id == "A4" and len(outs[2].items) == 1


def test_recommender_sees_writes_of_another_process(word_catalog: LiveCatalog) -> None:
    from .conftest import WordRetriever

    rec = Recommender(word_catalog)
    other = LiveCatalog.open(word_catalog.folder, loader=WordRetriever.load)
    other.add([ItemRecord("N1", "Volcanic clay face mask")])
    assert rec.recommend([{"title": "volcanic clay mask"}], k=1).items[0].item_id == "N1"
