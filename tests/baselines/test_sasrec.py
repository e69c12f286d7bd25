"""SASRec-CE: causality, padding, learning a sequential pattern, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glossrec.baselines.sasrec import SASRecModel, attention_mask, left_pad, length_batches
from glossrec.config import SASRecConfig

SMALL = SASRecConfig(max_len=8, hidden=16, blocks=2, heads=2, dropout=0.0, epochs=1)


def test_no_position_sees_the_future() -> None:
    model = SASRecModel(30, SMALL)
    base = torch.tensor([[0, 0, 3, 7, 1, 9, 4, 2]])
    later = base.clone()
    later[0, 5:] = torch.tensor([11, 12, 13])  # change only positions 5..7
    with torch.no_grad():
        h0, h1 = model.net.hidden(base), model.net.hidden(later)
    assert torch.allclose(h0[0, :5], h1[0, :5], atol=1e-6)  # positions 0..4 unchanged
    assert not torch.allclose(h0[0, 5:], h1[0, 5:])  # the later ones did change


def test_mask_is_causal_and_ignores_padding_keys() -> None:
    m = attention_mask(torch.tensor([[0, 0, 5, 6]]))[0, 0]
    assert not m.triu(1).any()  # never a later key
    assert m[3].tolist() == [False, False, True, True]  # real positions skip padding keys
    assert m[0].tolist() == [True, False, False, False]  # a padding row still attends itself


def test_left_padding_keeps_the_newest_items() -> None:
    rows = left_pad([[0, 1, 2, 3, 4], [7]], 3)
    assert rows.tolist() == [[3, 4, 5], [0, 0, 8]]


def test_more_padding_does_not_change_the_score() -> None:
    model = SASRecModel(30, SMALL)
    model.seen[:] = True
    a = model.score([[3, 4, 5]])
    model.cfg = model.cfg.model_copy(update={"max_len": 8})
    with torch.no_grad():
        short = model.net.logits(model.net.hidden(torch.tensor([[4, 5, 6]]))[:, -1]).numpy()
    np.testing.assert_allclose(a, short, rtol=1e-5, atol=1e-5)


def test_length_batches_cover_every_row_once() -> None:
    lengths = np.array([3, 9, 2, 5, 5, 7, 1, 4, 8, 6])
    batches = length_batches(lengths, 3, np.random.default_rng(0), pool=2)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(10))
    assert all(len(b) <= 3 for b in batches)


def test_learns_a_deterministic_successor_and_early_stops(tmp_path: Path) -> None:
    # Item i is always followed by item (i + 1) mod 20: a trained model must rank it first.
    n = 20
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(300):
        start = int(rng.integers(0, n))
        seqs.append([(start + j) % n for j in range(int(rng.integers(3, 9)))])
    valid = [(s[:-1], s[-1]) for s in seqs[:40]]
    cfg = SMALL.model_copy(update={"epochs": 60, "patience": 3, "learning_rate": 5e-3})
    model = SASRecModel(n, cfg)
    log = model.fit(seqs, valid)
    assert log.best_valid > 0.9
    assert log.epochs < 60  # stopped early once validation stopped improving
    top = model.score([[4, 5, 6], [17, 18]]).argmax(axis=1)
    assert top.tolist() == [7, 19]
    model.save(tmp_path / "m")
    again = SASRecModel.load(tmp_path / "m")
    np.testing.assert_allclose(again.score([[4, 5, 6]]), model.score([[4, 5, 6]]), rtol=1e-6)


def test_items_never_trained_on_are_not_scored() -> None:
    model = SASRecModel(10, SMALL)
    model.fit([[0, 1, 2], [1, 2, 3]])
    s = model.score([[1, 2], []])
    assert np.isneginf(s[0, 4:]).all() and np.isfinite(s[0, :4]).all()
    assert np.isneginf(s[1]).all()  # an empty history ranks nothing


def test_heads_must_divide_hidden() -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        SASRecConfig(hidden=10, heads=3)
