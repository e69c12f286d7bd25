"""Leave-last-out splits: the reference validation rule, one example per user, no leakage."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from glossrec.config import SplitConfig
from glossrec.data import Dataset, load_dataset
from glossrec.splits import make_splits, sample_users, validation_users

from .conftest import toy_dataset

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "amazon2014"


def _toy(n_users: int = 200, seed: int = 0) -> Dataset:
    return toy_dataset(n_users, seed)


def test_reference_validation_rule() -> None:
    ds = _toy()
    lengths = [len(s) for s in ds.sequences]
    ids = sorted(ds.users)
    random.seed(42)
    expected = {u for u in random.sample(ids, int(0.05 * len(ids))) if lengths[ds.users.index(u)] >= 3}
    assert validation_users(ds.users, lengths, SplitConfig()) == expected


def _assert_no_leakage(ds: Dataset, every_prefix: bool) -> None:
    s = make_splits(ds, SplitConfig(every_prefix=every_prefix))
    test_pos = {e.user_id: e.length - 1 for e in s.test}
    val_pos = {e.user_id: e.length - 2 for e in s.valid}
    seq = dict(zip(ds.users, ds.sequences))
    for e in s.train:
        pos = len(e.history)  # the target's position in the user's sequence
        assert seq[e.user_id][pos] == e.target
        assert pos < test_pos[e.user_id], "a test target is trained on"
        if e.user_id in val_pos:
            assert pos < val_pos[e.user_id], "a validation target is trained on"
        assert len(e.history) >= 1


@pytest.mark.parametrize("every_prefix", [False, True])
def test_no_test_or_validation_target_is_trained_on(every_prefix: bool) -> None:
    _assert_no_leakage(_toy(), every_prefix)


def test_one_training_example_per_user_and_shift() -> None:
    ds = _toy()
    s = make_splits(ds)
    val = {e.user_id for e in s.valid}
    assert len({e.user_id for e in s.train}) == len(s.train)
    for e in s.train:
        n = e.length
        assert len(e.history) == (n - 3 if e.user_id in val else n - 2)
    for e in s.test:
        assert len(e.history) == e.length - 1 and e.length >= 3
    more = make_splits(ds, SplitConfig(every_prefix=True))
    assert len(more.train) > len(s.train)


def test_sample_users_is_reproducible_and_ordered() -> None:
    ex = make_splits(_toy()).test
    a, b = sample_users(ex, 20, seed=3), sample_users(ex, 20, seed=3)
    assert a == b and len(a) == 20
    assert [ex.index(x) for x in a] == sorted(ex.index(x) for x in a)
    assert sample_users(ex, None) is ex


@pytest.mark.realdata
@pytest.mark.parametrize("name,n_val,n_test", [("beauty", 1118, 22363), ("toys", 969, 19395),
                                               ("sports", 1779, 35597)])
def test_real_split_sizes(name: str, n_val: int, n_test: int) -> None:
    if not (SHARED / name).is_dir():
        pytest.skip("shared data absent")
    ds = load_dataset(SHARED / name)
    s = make_splits(ds)
    assert (len(s.valid), len(s.test)) == (n_val, n_test)
    _assert_no_leakage(ds, every_prefix=False)
