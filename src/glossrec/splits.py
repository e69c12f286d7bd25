"""Leave-last-out splits, exactly as the GLoSS reference code makes them.

For a user with items i_1..i_n (n >= 3):

- test: history i_1..i_{n-1}, target i_n (every user);
- validation (5% of users): history i_1..i_{n-2}, target i_{n-1};
- train: one example per user, history i_1..i_{n-2}, target i_{n-1}; for validation users
  shifted one back (i_1..i_{n-3} -> i_{n-2}) so no validation target is ever trained on.

Validation users follow the reference rule: users with at least one titled item, sorted by id;
``random.seed(42); random.sample(sorted_ids, int(0.05 * len))``; sampled users with fewer than
3 items are then skipped (Beauty 1,118, Toys 969, Sports 1,779).

:func:`prepare` is the one way a command, the pipeline or training gets a config's dataset, its
splits and the users it evaluates (``glossrec.pipeline.prepare`` is this function).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from glossrec.config import RunConfig, SplitConfig
from glossrec.data import Dataset, load_data

T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    """One (history -> target) pair, in catalog indices."""

    user_id: str
    history: tuple[int, ...]
    target: int
    length: int
    """The user's full sequence length n (for segments)."""


@dataclass
class Splits:
    train: list[Example]
    valid: list[Example]
    test: list[Example]

    def get(self, name: Literal["train", "valid", "test"]) -> list[Example]:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def validation_users(users: list[str], lengths: list[int], cfg: SplitConfig) -> set[str]:
    """The reference code's validation sample (see module docstring)."""
    sorted_ids = sorted(users)
    n_val = int(cfg.valid_fraction * len(sorted_ids))
    rng = random.Random(cfg.seed)  # same stream as random.seed(42); random.sample(...)
    sampled = rng.sample(sorted_ids, n_val)
    length = dict(zip(users, lengths))
    return {u for u in sampled if length[u] >= cfg.min_length}


def _train_examples(uid: str, seq: np.ndarray, end: int, every_prefix: bool) -> list[Example]:
    """Examples whose target is seq[end - 1]; every_prefix adds all earlier targets too."""
    n = len(seq)
    first = 1 if every_prefix else end - 1
    return [Example(uid, tuple(int(x) for x in seq[:t]), int(seq[t]), n)
            for t in range(max(first, 1), end)]


def make_splits(ds: Dataset, cfg: SplitConfig | None = None) -> Splits:
    cfg = cfg or SplitConfig()
    lengths = [len(s) for s in ds.sequences]
    val_users = validation_users(ds.users, lengths, cfg)
    train: list[Example] = []
    valid: list[Example] = []
    test: list[Example] = []
    for uid, seq in zip(ds.users, ds.sequences):
        n = len(seq)
        if n < cfg.min_length:
            continue
        test.append(Example(uid, tuple(int(x) for x in seq[:-1]), int(seq[-1]), n))
        if uid in val_users:
            valid.append(Example(uid, tuple(int(x) for x in seq[:-2]), int(seq[-2]), n))
            # Targets up to i_{n-2}; with n == 3 the history would be empty, so no example.
            train.extend(_train_examples(uid, seq, n - 2, cfg.every_prefix))
        else:
            train.extend(_train_examples(uid, seq, n - 1, cfg.every_prefix))
    return Splits(train, valid, test)


def sample_users(examples: Sequence[T], n: int | None, seed: int = 0) -> list[T]:
    """A reproducible random subset of n examples (all when n is None or too large), in order.

    Any sequence: training samples its (prompt, target) pairs with it too."""
    if n is None or n >= len(examples):
        return examples if isinstance(examples, list) else list(examples)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(examples), size=n, replace=False))
    return [examples[i] for i in keep]


@dataclass
class Prepared:
    dataset: Dataset
    examples: list[Example]
    """The evaluated users of the chosen split (sampled when generate.max_users or
    evaluate.users is set: :func:`users_to_sample`)."""
    splits: Splits | None = None
    """The dataset's splits, made once and handed to every stage of a run."""


def users_to_sample(cfg: RunConfig, users: int | None = None) -> int | None:
    """How many users of the split a run generates for and scores (None: all of them):
    `users` (the CLI's --users), else generate.max_users, else evaluate.users.

    One rule for `glossrec run` and `glossrec generate`, so both draw the same reproducible
    sample (evaluate.user_seed) and a run directory's generations file fits either.
    """
    return users or cfg.generate.max_users or cfg.evaluate.users


def prepare(cfg: RunConfig, ds: Dataset | None = None, splits: Splits | None = None, *,
            split: Literal["train", "valid", "test"] | None = None, users: int | None = None,
            where: str | Path | None = None) -> Prepared:
    """The dataset (loaded unless given: :func:`glossrec.data.load_data`, `where` naming the
    config file in its errors), its splits (made unless given) and the evaluated users of
    `split` (default evaluate.split), `users` of them or as :func:`users_to_sample` says."""
    ds = ds or load_data(cfg, where)
    splits = splits or make_splits(ds, cfg.split)
    examples = sample_users(splits.get(split or cfg.evaluate.split), users_to_sample(cfg, users),
                            cfg.evaluate.user_seed)
    return Prepared(ds, examples, splits)
