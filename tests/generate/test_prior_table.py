"""The item prior read from a table (generate.prior_table) against the prior run as rows of the
search's steps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from glossrec.generate.constrain import CatalogTrie
from glossrec.generate.prior_table import PriorTable

from .test_constrain import catalog_texts, grounded, random_users


def test_table_values_are_the_prior_rows(peaky_lm: tuple[Any, Any]) -> None:
    """Every node's value is log p(its token | empty-history prompt, its parent's prefix): the
    number the search's prior row gives there (full-vocabulary log-softmax), to fp32 rounding."""
    model, tok = peaky_lm
    texts = catalog_texts(30, seed=3)
    trie = CatalogTrie.from_texts(tok, texts)
    gen = grounded(model, tok, trie, prior_weight=1.0, prior_table=True)
    table = gen.prior_table()
    assert table is not None and not np.isnan(table.values).any()
    assert len(table.values) == trie.nodes
    checked = 0
    for key in (0, 7, 19):
        tokens = trie.tokens(key)
        path = trie.path(tokens)
        with torch.no_grad():
            rows = gen._prior_next([list(tokens[:i]) for i in range(len(tokens))])
        want = rows[torch.arange(len(tokens)), torch.tensor(tokens)].numpy()
        np.testing.assert_allclose(table.edges(path), want, rtol=0, atol=2e-5)
        checked += len(tokens)
    assert checked > 10


@pytest.mark.parametrize("shared_prompts", [True, False])
def test_search_with_the_table_gives_the_search_with_prior_rows(peaky_lm: tuple[Any, Any],
                                                                 shared_prompts: bool) -> None:
    """The same items in the same order, with no prior rows run (both KV layouts)."""
    model, tok = peaky_lm
    texts = catalog_texts(120, seed=5)
    trie = CatalogTrie.from_texts(tok, texts)
    prompts, hist = random_users(texts, 8, seed=3)
    rows = grounded(model, tok, trie, prior_weight=1.0, batch_size=4,
                    shared_prompts=shared_prompts)
    table = grounded(model, tok, trie, prior_weight=1.0, batch_size=4,
                     shared_prompts=shared_prompts, prior_table=True)
    want = rows.generate(prompts, exclude=hist)
    assert table.generate(prompts, exclude=hist) == want
    assert rows.work.prior_rows > 0 and table.work.prior_rows == 0
    assert table.work.beam_rows == rows.work.beam_rows
    # Off without a prior weight: nothing to read.
    assert grounded(model, tok, trie, prior_table=True).prior_table() is None


def test_items_added_later_are_scored_and_found(peaky_lm: tuple[Any, Any]) -> None:
    """A live catalog: only the new item is scored at the next search, and the search finds it
    as a generator made after the addition does (the table grows with the trie's nodes)."""
    model, tok = peaky_lm
    texts = catalog_texts(60, seed=8)
    trie = CatalogTrie.from_texts(tok, texts[:-1])
    gen = grounded(model, tok, trie, prior_weight=1.0, prior_table=True)
    prompts, hist = random_users(texts[:-1], 4, seed=6)
    gen.generate(prompts, exclude=hist)
    table = gen.prior_table()
    assert table is not None
    scored: list[list[int]] = []
    real = gen.prior_token_logprobs
    gen.prior_token_logprobs = lambda items: scored.append(list(map(list, items))) or real(items)  # type: ignore[method-assign]
    trie.add(len(texts) - 1, texts[-1])
    # Everyone's best item excluded, so that the new item has room to appear.
    got = gen.generate(prompts, exclude=hist)
    assert scored == [[list(trie.tokens(len(texts) - 1))]]
    assert len(table.values) == trie.nodes and not np.isnan(table.values).any()
    fresh = grounded(model, tok, CatalogTrie.from_texts(tok, texts), prior_weight=1.0)
    assert got == fresh.generate(prompts, exclude=hist)
    gen.generate(prompts, exclude=hist)
    assert len(scored) == 1                            # up to date: nothing scored again


def test_paths_already_scored_cost_nothing(peaky_lm: tuple[Any, Any]) -> None:
    """A duplicate text, or an item removed and added back, reuses its nodes' values; a scorer
    that returns the wrong number of values is an error, not a silent misfill."""
    _, tok = peaky_lm
    trie = CatalogTrie.from_texts(tok, ["Title: red gel", "Title: red gel pack"])
    calls: list[int] = []

    def score(items: Any) -> list[np.ndarray]:
        calls.append(len(items))
        return [np.arange(len(t), dtype=np.float32) for t in items]

    table = PriorTable()
    assert table.update(trie, score) == 2 and calls == [2]
    trie.add(2, "Title: red gel")                 # a duplicate: the same path
    trie.remove(1)
    trie.add(1, "Title: red gel pack")            # back again
    assert table.update(trie, score) == 0 and calls == [2]
    trie.add(3, "Title: blue gel")
    assert table.update(trie, score) == 1 and calls == [2, 1]
    assert table.edges(trie.path(trie.tokens(3))).tolist() == list(range(len(trie.tokens(3))))
    trie.add(4, "Title: comb")
    with pytest.raises(ValueError, match="item 4"):
        table.update(trie, lambda items: [np.zeros(1, dtype=np.float32) for _ in items])


def test_an_up_to_date_table_looks_only_at_the_items_added_since(
        peaky_lm: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """After its first sync with a trie, the table reads the trie's additions, not every item
    (a live catalog pays for what it adds); a replaced text is scored again; another trie is
    read in full."""
    _, tok = peaky_lm
    trie = CatalogTrie.from_texts(tok, ["Title: red gel", "Title: red gel pack"])

    def score(items: Any) -> list[np.ndarray]:
        return [np.arange(len(t), dtype=np.float32) for t in items]

    table = PriorTable()
    table.update(trie, score)

    def no_full_walk() -> list[int]:
        raise AssertionError("walked every item")

    monkeypatch.setattr(trie, "keys", no_full_walk)
    trie.add(2, "Title: blue gel")
    trie.add(1, "Title: green comb")              # replaced: a new path
    trie.remove(0)
    assert [k for k, _ in table.missing(trie)] == [2, 1]
    assert table.update(trie, score) == 2
    assert not np.isnan(table.edges(trie.path(trie.tokens(1)))).any()
    other = CatalogTrie.from_texts(tok, ["Title: red gel", "Title: pink brush"])
    assert [k for k, _ in table.missing(other)] == [0, 1]
    assert table.update(other, score) == 2 and len(table.values) == other.nodes


def test_a_saved_table_is_read_back_for_the_same_model_only(peaky_lm: tuple[Any, Any],
                                                            tmp_path: Any) -> None:
    """Kept on disk: a second generator on the same model and prompt scores nothing and reads
    the same values; another prompt, or a damaged file, is made again (never used)."""
    model, tok = peaky_lm
    texts = catalog_texts(40, seed=2)
    path = tmp_path / "prior_table.npz"

    def make(**kw: Any) -> Any:
        gen = grounded(model, tok, CatalogTrie.from_texts(tok, texts), prior_weight=1.0,
                       prior_table=True)
        gen.prior_table_file = path
        gen.prior_table_meta.update(kw)
        scored: list[int] = []
        real = gen.prior_token_logprobs
        gen.prior_token_logprobs = lambda items: scored.append(len(items)) or real(items)
        return gen, scored

    first, scored = make(model="m")
    want = first.prior_table().values.copy()
    assert sum(scored) == len(texts) and path.is_file()
    again, scored = make(model="m")
    np.testing.assert_array_equal(again.prior_table().values, want)
    assert scored == []
    other, scored = make(model="another")
    other.prior_table()
    assert sum(scored) == len(texts)                     # and it replaced the file
    path.write_bytes(b"not a table")
    damaged, scored = make(model="another")
    np.testing.assert_array_equal(damaged.prior_table().values, want)
    assert sum(scored) == len(texts)
