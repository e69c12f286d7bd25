"""What the ID-based models share: leak-free training sequences and ranking with exclusions."""

from __future__ import annotations

import numpy as np

from glossrec.baselines import KINDS, load_model, new_model, train_sequences
from glossrec.baselines.base import rank_histories
from glossrec.baselines.neighbours import Popularity
from glossrec.config import RunConfig, SplitConfig
from glossrec.data import Dataset
from glossrec.splits import make_splits

from ..conftest import toy_dataset


def _toy(n_users: int = 400, seed: int = 0) -> Dataset:
    return toy_dataset(n_users, seed, n_items=60, max_len=14)


def test_no_validation_or_test_target_reaches_training() -> None:
    for every_prefix in (False, True):
        ds = _toy()
        splits = make_splits(ds, SplitConfig(every_prefix=every_prefix))
        trained = train_sequences(splits)
        by_user = {e.user_id: (*e.history, e.target) for e in splits.train}
        # Items are distinct within a user, so a sequence names its positions.
        full = dict(zip(ds.users, (tuple(int(x) for x in s) for s in ds.sequences)))
        valid_users = {e.user_id for e in splits.valid}
        assert valid_users
        longest = {}
        for e in splits.train:
            longest[e.user_id] = max(longest.get(e.user_id, 0), len(e.history) + 1)
        for uid, n_seen in longest.items():
            seq = full[uid]
            held_out = 2 if uid in valid_users else 1  # test target, and the validation one
            assert n_seen == len(seq) - held_out
        assert len(trained) == len(by_user) if not every_prefix else len(trained) == len(longest)
        for seq in trained:
            uid = next(u for u, s in full.items() if s[:len(seq)] == seq)
            assert full[uid][-1] not in seq
            if uid in valid_users:
                assert full[uid][-2] not in seq


def test_rank_histories_excludes_and_pads() -> None:
    pop = Popularity(5)
    pop.fit([[0, 1, 1, 2, 2, 2]])
    items, scores = rank_histories(pop, [[2], [0]], 4, [np.array([2]), np.array([], dtype=np.int64)])
    assert items[0].tolist() == [1, 0, 3, 4]  # 2 excluded; zero-count items by catalog order
    assert items[1].tolist() == [2, 1, 0, 3]


def test_every_kind_saves_and_loads(tmp_path) -> None:
    ds = _toy(200)
    splits = make_splits(ds)
    cfg = RunConfig().updated(sasrec={"epochs": 1, "hidden": 16, "max_len": 8})
    for kind in KINDS:
        model = new_model(kind, len(ds.catalog), cfg)
        model.fit(train_sequences(splits))
        model.save(tmp_path / kind)
        again = load_model(tmp_path / kind)
        assert again.kind == kind
        h = [list(e.history) for e in splits.test[:5]]
        np.testing.assert_allclose(again.score(h), model.score(h), rtol=1e-5)
