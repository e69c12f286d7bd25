"""The hybrid: weighted rrf and interleaving by hand, tuning on validation users, new items
through text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glossrec.baselines import fit_model
from glossrec.config import HybridConfig, RunConfig
from glossrec.data import Catalog, Dataset
from glossrec.hybrid import Lists, fuse_lists, interleave_lists, slot_grid, tune, weight_grid
from glossrec.pipeline import run_hybrid
from glossrec.rundir import RunDir
from glossrec.splits import make_splits


def test_weighted_rrf_by_hand() -> None:
    a = Lists.one_per_user("lis", np.array([[1, 2, -1]]))
    b = Lists("gloss", np.array([[2, 3, -1], [3, -1, -1]]), np.array([0, 2]))
    items, scores = fuse_lists([a, b], {"lis": 1.0, "gloss": 2.0}, 3, rrf_k=10)
    # 1: 1/11; 2: 1/12 + 2/11; 3: 2/12 + 2/11
    assert items[0].tolist() == [3, 2, 1]
    assert scores[0].tolist() == pytest.approx([2 / 12 + 2 / 11, 1 / 12 + 2 / 11, 1 / 11])
    only_a, _ = fuse_lists([a, b], {"lis": 1.0, "gloss": 0.0}, 3, rrf_k=10)
    assert only_a[0].tolist() == [1, 2, -1]


def test_tune_picks_the_list_that_finds_the_targets() -> None:
    good = Lists.one_per_user("sasrec", np.array([[5, 8], [6, 8], [7, 8]]))
    bad = Lists.one_per_user("lis", np.array([[1, 2], [2, 3], [3, 4]]))
    t = tune([bad, good], np.array([5, 6, 7]), HybridConfig(weight_grid=[0.0, 4.0], rrf_k_grid=[10]))
    assert t.fixed == {"weights": {"lis": 1.0, "sasrec": 4.0}, "rrf_k": 10} and t.valid_ndcg10 == 1.0
    assert len(t.tried) == 2
    assert weight_grid(["a", "b", "c"], HybridConfig(weight_grid=[0, 1]))[-1] == {"a": 1.0, "b": 1, "c": 1}


def test_interleave_by_hand() -> None:
    lis = Lists.one_per_user("lis", np.array([[1, 2, 3, 4, -1], [7, -1, -1, -1, -1]]))
    lm = Lists.one_per_user("gloss", np.array([[2, 9, 8, -1, -1], [8, 9, -1, -1, -1]]))
    items, scores = interleave_lists([lis, lm], {"lis": 2, "gloss": 1}, 6)
    # user 0: lis 1, 2 | lm 9 (2 is listed) | lis 3, 4 | lm 8
    assert items[0].tolist() == [1, 2, 9, 3, 4, 8]
    # user 1: lis 7, then lis is out: its places pass to the LM (8, 9); then both are out
    assert items[1].tolist() == [7, 8, 9, -1, -1, -1]
    assert scores[0].tolist() == pytest.approx([1 / r for r in range(1, 7)])
    assert np.isneginf(scores[1, 3:]).all()
    only_lm, _ = interleave_lists([lis, lm], {"lis": 0, "gloss": 3}, 3)
    assert only_lm[0].tolist() == [2, 9, 8]
    with pytest.raises(ValueError, match="one list per user"):
        interleave_lists([Lists("gloss", np.array([[1], [2]]), np.array([0, 2]))], {"gloss": 1}, 2)


def test_tune_interleave_over_every_split_of_a_block() -> None:
    grid = slot_grid(["lis", "gloss"], 5)
    assert len(grid) == 6 and {"lis": 3, "gloss": 2} in grid
    assert all(sum(g.values()) == 5 for g in slot_grid(["a", "b", "c"], 5))
    # The target is LIS's 2nd item for users 0-1 and the LM's 1st for user 2. Slots (2, 3)
    # rank them at places 2, 2 and 3: the best NDCG@10 ((3, 2) puts user 2's at 4, (1, 4)
    # users 0-1's at 6, (5, 0) never lists it).
    lis = Lists.one_per_user("lis", np.array([[1, 5, 6], [2, 6, 7], [3, 4, 5]]))
    lm = Lists.one_per_user("gloss", np.array([[8, 9, 10], [8, 9, 10], [9, 8, 10]]))
    t = tune([lis, lm], np.array([5, 6, 9]), HybridConfig(fusion="interleave", block=5))
    assert t.fixed == {"slots": {"lis": 2, "gloss": 3}}
    assert len(t.tried) == 6
    with pytest.raises(ValueError, match="slots"):
        HybridConfig(fusion="interleave", slots={"lis": 0, "gloss": 0})


def _shop(n_users: int = 300, seed: int = 0) -> Dataset:
    """Items come in families of 3 sharing a word; users buy within a family, in order."""
    rng = np.random.default_rng(seed)
    fams = 20
    ids = [f"i{j}" for j in range(3 * fams)] + ["new"]
    titles = [f"{w} product {j}" for j in range(3 * fams) for w in [f"fam{j // 3}"]]
    titles.append("fam7 product brand new")  # never bought: SASRec has never seen it
    seqs = []
    for _ in range(n_users):
        f = int(rng.integers(0, fams))
        seqs.append(np.array([3 * f, 3 * f + 1, 3 * f + 2, 3 * ((f + 1) % fams)]))
    return Dataset("shop", Catalog(ids, titles), [f"u{u:03d}" for u in range(n_users)], seqs)


def test_hybrid_recommends_a_new_item_through_text(tmp_path: Path) -> None:
    ds = _shop()
    cfg = RunConfig().updated(retrieve={"retriever": "bm25", "exclude_history": True},
                              sasrec={"epochs": 3, "hidden": 16, "max_len": 8},
                              evaluate={"cutoffs": [5, 10]},
                              hybrid={"weights": {"lis": 1.0, "sasrec": 1.0}, "rrf_k": 10, "depth": 20})
    model = fit_model("sasrec", len(ds.catalog), make_splits(ds), cfg)
    new = ds.catalog.ids.index("new")
    assert not model.seen[new] and np.isneginf(model.score([[21, 22]])[0, new])
    model.save(RunDir(tmp_path / "sas").baseline)
    ev = run_hybrid(cfg, [tmp_path / "sas"], tmp_path / "hyb", ds=ds)
    fam7 = [u for u, e in enumerate(ev.user_ids) if ds.catalog.ids[int(ev.targets[u])] == "i24"]
    assert fam7, "some test user's history ends in family 7"
    # Users whose last item is in family 7: LIS finds the new fam7 item by its words.
    assert all(new in ev.ranked[u].tolist() for u in fam7)
    assert RunDir(tmp_path / "hyb").metrics.is_file()


def test_hybrid_tunes_on_validation_users(tmp_path: Path) -> None:
    ds = _shop(600)
    cfg = RunConfig().updated(retrieve={"retriever": "bm25"}, evaluate={"cutoffs": [5, 10]},
                              hybrid={"weight_grid": [0.0, 1.0], "rrf_k_grid": [10]})
    model = fit_model("pop", len(ds.catalog), make_splits(ds), cfg)
    model.save(RunDir(tmp_path / "pop").baseline)
    ev = run_hybrid(cfg, [tmp_path / "pop"], tmp_path / "hyb", ds=ds)
    import json

    meta = json.loads(RunDir(tmp_path / "hyb").metrics.read_text())
    assert meta["tuned"]["valid_users"] == len(make_splits(ds).valid) > 0
    assert meta["weights"]["lis"] == 1.0 and len(meta["tuned"]["tried"]) == 2
    assert ev.metrics["overall"]["users"] == len(make_splits(ds).test)


def test_hybrid_tunes_on_a_sample_of_validation_users_with_their_texts(tmp_path: Path) -> None:
    """hybrid.tune_users: texts generated for that many validation users (the same draw as
    `glossrec generate --split valid --users N`) are enough to tune the LM's weight."""
    import json

    from glossrec.io import write_jsonl
    from glossrec.splits import sample_users

    ds = _shop(600)
    splits = make_splits(ds)
    cfg = RunConfig().updated(retrieve={"retriever": "bm25"}, evaluate={"cutoffs": [5, 10]},
                              hybrid={"weight_grid": [0.0, 1.0], "rrf_k_grid": [10], "tune_users": 12})
    sample = sample_users(splits.valid, 12, cfg.evaluate.user_seed)
    assert 12 < len(splits.valid)

    def texts(examples: list, path: Path) -> Path:  # the target's own title: a perfect LM
        write_jsonl(path, ({"user_id": e.user_id, "texts": [ds.catalog.text(e.target)]}
                           for e in examples))
        return path

    gens = {"valid": texts(sample, tmp_path / "valid.jsonl"),
            "test": texts(splits.test, tmp_path / "test.jsonl")}
    ev = run_hybrid(cfg, [], tmp_path / "hyb", generations=gens, ds=ds)
    meta = json.loads(RunDir(tmp_path / "hyb").metrics.read_text())
    assert meta["tuned"]["valid_users"] == 12
    assert meta["weights"]["gloss"] == 1.0 and meta["components"] == ["lis", "gloss"]
    lis_only = run_hybrid(cfg, [], tmp_path / "lis", ds=ds)
    assert ev.metrics["overall"]["recall@5"] > lis_only.metrics["overall"]["recall@5"]
    with pytest.raises(Exception, match="no generated texts"):  # all validation users need texts
        run_hybrid(cfg.updated(hybrid={"tune_users": None}), [], tmp_path / "hyb2",
                   generations=gens, ds=ds)
