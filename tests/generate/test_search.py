"""glossrec's grounded beam-search loop against transformers' generate on the same search."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from glossrec.generate.constrain import CatalogTrie
from glossrec.generate.hf import HFGenerator

from .test_constrain import catalog_texts, grounded, random_users


class _RowCounter:
    """Counts the rows of every forward pass of a model (wraps its forward)."""

    def __init__(self, model: Any) -> None:
        self.model, self.rows, self.calls = model, 0, 0
        self.real = model.forward

    def __enter__(self) -> _RowCounter:
        # wraps: generate reads the forward's signature to choose its arguments
        @functools.wraps(self.real)
        def forward(*a: Any, **k: Any) -> Any:
            ids = k.get("input_ids", a[0] if a else None)
            self.rows += int(ids.shape[0])
            self.calls += 1
            return self.real(*a, **k)
        self.model.forward = forward
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.model.forward


def _pair(model: Any, tok: Any, trie: CatalogTrie, **cfg: Any) -> tuple[HFGenerator, HFGenerator]:
    return (grounded(model, tok, trie, grounded_search="glossrec", **cfg),
            grounded(model, tok, trie, grounded_search="transformers", **cfg))


@pytest.mark.parametrize("prior_weight", [0.0, 1.0])
@pytest.mark.parametrize("num_beams", [3, 5])
def test_same_hypotheses_in_the_same_order_as_transformers(peaky_lm: tuple[Any, Any],
                                                           prior_weight: float,
                                                           num_beams: int) -> None:
    """A catalog large enough that every prompt finishes num_return items: the two loops must
    return the same items in the same (beam score) order, with and without the prior."""
    model, tok = peaky_lm
    texts = catalog_texts(120, seed=5)
    trie = CatalogTrie.from_texts(tok, texts)
    prompts, hist = random_users(texts, 10, seed=11)
    ours, theirs = _pair(model, tok, trie, num_beams=num_beams, num_return=num_beams,
                         batch_size=4, prior_weight=prior_weight)
    with _RowCounter(model) as a:
        got = ours.generate(prompts, exclude=hist)
    with _RowCounter(model) as b:
        want = theirs.generate(prompts, exclude=hist)
    assert all(len(row) == num_beams for row in want)      # the precondition of "the same"
    assert got == want
    # Only live beams run (fewer rows), and the prior rides in the beams' pass (fewer passes).
    assert a.rows < b.rows
    assert a.calls < b.calls if prior_weight else a.calls <= b.calls


def test_re_ranked_scores_and_single_prompts_agree(peaky_lm: tuple[Any, Any]) -> None:
    """PMI re-ranking reuses the loop's prompt cache; a prompt alone gets what it gets in a
    batch (left padding masked, the prior row padded to the batch's width)."""
    model, tok = peaky_lm
    texts = catalog_texts(120, seed=5)
    trie = CatalogTrie.from_texts(tok, texts)
    prompts, hist = random_users(texts, 6, seed=2)
    ours, theirs = _pair(model, tok, trie, grounded_score="pmi", prior_weight=1.0, batch_size=6)
    got = ours.generate(prompts, exclude=hist)
    assert got == theirs.generate(prompts, exclude=hist)
    single = grounded(model, tok, trie, grounded_score="pmi", prior_weight=1.0, batch_size=1)
    assert got == single.generate(prompts, exclude=hist)


def test_small_catalogs_return_only_finished_items(peaky_lm: tuple[Any, Any]) -> None:
    """Fewer live items than beams (where transformers pads its candidates with copies): every
    text is a distinct catalog item outside the history, and an exhausted catalog ends the
    search (every item excluded: nothing)."""
    model, tok = peaky_lm
    texts = catalog_texts(4, seed=9)
    trie = CatalogTrie.from_texts(tok, texts)
    gen = grounded(model, tok, trie, num_beams=5, num_return=5, prior_weight=1.0)
    prompts, _ = random_users(catalog_texts(40), 3, seed=4)
    out = gen.generate(prompts, exclude=[[0], [1, 2], [0, 1, 2, 3]])
    assert sorted(out[0]) == sorted(texts[1:])
    assert sorted(out[1]) == sorted([texts[0], texts[3]])
    assert out[2] == []


def test_a_model_without_a_reusable_cache_falls_back(peaky_lm: tuple[Any, Any]) -> None:
    model, tok = peaky_lm
    texts = catalog_texts(40)
    trie = CatalogTrie.from_texts(tok, texts)
    prompts, hist = random_users(texts, 3, seed=1)
    gen = grounded(model, tok, trie, grounded_search="glossrec")
    want = gen.generate(prompts, exclude=hist)
    gen.prefill = lambda ids, mask: None  # type: ignore[method-assign]
    with _RowCounter(model) as rows:
        assert gen.generate(prompts, exclude=hist) == want
    assert rows.calls > 0
