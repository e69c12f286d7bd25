"""The live catalog over the real dense retriever (embedded all-MiniLM-L6-v2, no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from glossrec.serve import LiveCatalog, Recommender, make_index_run

from .conftest import write_dataset


@pytest.mark.slow
def test_dense_live_catalog_add_remove_and_reload(tmp_path: Path) -> None:
    run = make_index_run(write_dataset(tmp_path / "data"), "dense", tmp_path / "run")
    rec = Recommender.from_run(run)
    assert rec.mode == "lis" and rec.catalog.retriever.kind == "dense"
    assert rec.recommend(["A2"], k=1).items[0].item_id == "A3"
    title = "Himalayan pink salt body scrub with lavender"
    rec.add_items([{"item_id": "NEW", "title": title}])
    top = rec.recommend([{"title": title}], k=1).items[0]
    assert top.item_id == "NEW" and top.score == pytest.approx(1.0, abs=1e-4)
    again = LiveCatalog.open(run / "index")
    assert "NEW" in again and again.retriever.kind == "dense"
    rec.remove_items(["NEW"])
    assert "NEW" not in [i.item_id for i in rec.recommend([{"title": title}], k=20).items]
    assert "NEW" not in Recommender.from_run(run).catalog
