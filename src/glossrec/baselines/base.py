"""What every ID-based model shares: the interface, its training data, and top-k scoring.

An ID-based model knows items by catalog position, not text. It is fit on the split's training
sequences and scores every catalog position for a history; :func:`rank_histories` turns those
score rows into top-k lists (history excluded or not) with the exact, tie-stable
:func:`glossrec.retrieve.base.topk` the text retrievers use, so every method is ranked alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from glossrec.retrieve.base import mask_rows, rows_per_chunk, topk
from glossrec.splits import Example, Splits

META_FILE = "baseline.json"
"""Every saved model's description (its ``kind`` first), beside its weights."""

SCORE_BUDGET = 256 << 20
"""Bytes of one [users, items] float32 score block."""


class IdModel(Protocol):
    kind: str
    n_items: int

    def fit(self, train_seqs: Sequence[Sequence[int]],
            valid: Sequence[tuple[Sequence[int], int]] = ()) -> object: ...

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 [n, n_items]; -inf for an item the model cannot score."""

    def save(self, folder: Path) -> None: ...


def train_sequences(splits: Splits) -> list[tuple[int, ...]]:
    """Each user's training sequence: the longest training example's history + its target.

    By the split's construction (glossrec.splits) this never reaches a validation or test
    target: the model sees exactly what the language model is trained on."""
    longest: dict[str, tuple[int, ...]] = {}
    for e in splits.train:
        seq = (*e.history, e.target)
        if len(seq) > len(longest.get(e.user_id, ())):
            longest[e.user_id] = seq
    return list(longest.values())


def validation_pairs(examples: Sequence[Example]) -> list[tuple[tuple[int, ...], int]]:
    return [(e.history, e.target) for e in examples]


def rank_histories(model: IdModel, histories: Sequence[Sequence[int]], k: int,
                   exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(items [n, k] int64, scores [n, k] float32) of each history, -1 / -inf padded; items in
    exclude[i] are never ranked for history i. Scored in blocks of at most SCORE_BUDGET bytes."""
    n = len(histories)
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_sc = np.full((n, k), -np.inf, dtype=np.float32)
    step = rows_per_chunk(model.n_items, SCORE_BUDGET)
    for s in range(0, n, step):
        block = model.score(histories[s:s + step])
        mask_rows(block, exclude, offset=s)
        out_idx[s:s + len(block)], out_sc[s:s + len(block)] = topk(block, k)
    return out_idx, out_sc
