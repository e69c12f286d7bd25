"""glossrec's grounded beam-search loop against transformers' generate on the same search."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from glossrec.config import GenerateConfig
from glossrec.generate.constrain import CatalogTrie
from glossrec.generate.hf import HFGenerator
from glossrec.generate.search import grounded_beam_search
from glossrec.generate.shared_kv import cache_layers, prefill_after_head, supported

from .test_constrain import catalog_texts, grounded, prompt_of, random_users


class _RowCounter:
    """Counts the rows of every forward pass of a model, the passes, the passes of one
    token per row (the search's steps) and the most rows of a step (wraps its forward)."""

    def __init__(self, model: Any) -> None:
        self.model, self.rows, self.calls, self.steps, self.most = model, 0, 0, 0, 0
        self.real = model.forward

    def __enter__(self) -> _RowCounter:
        # wraps: generate reads the forward's signature to choose its arguments
        @functools.wraps(self.real)
        def forward(*a: Any, **k: Any) -> Any:
            ids = k.get("input_ids", a[0] if a else None)
            self.rows += int(ids.shape[0])
            self.calls += 1
            self.steps += int(ids.shape[1] == 1)
            if ids.shape[1] == 1:
                self.most = max(self.most, int(ids.shape[0]))
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
    # Only live beams run (fewer rows), and the prior rides in the beams' pass (fewer steps).
    assert a.rows < b.rows
    assert a.steps < b.steps if prior_weight else a.steps <= b.steps


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


# ---- each prompt's KV once (glossrec.generate.shared_kv) against one copy per row ------------


def _gqa_lm(tok: Any, tiny_lm_dir: Any) -> Any:
    """The tiny LM's shape with grouped-query attention (4 heads, 2 KV heads), peaked weights."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_lm_dir)
    config.num_key_value_heads = 2
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3, generator=gen)
    return model.eval()


@pytest.mark.parametrize("kv_heads", ["all", "grouped"])
@pytest.mark.parametrize("prior_weight,score", [(0.0, "beam"), (1.0, "beam"), (1.0, "pmi"),
                                                (0.0, "length")])
def test_shared_prompt_kv_gives_the_copied_kv_search(peaky_lm: tuple[Any, Any], tiny_lm_dir: Any,
                                                     kv_heads: str, prior_weight: float,
                                                     score: str) -> None:
    """Prompts of different lengths in one batch, history excluded, one prompt with an empty
    history (all of it shared with the prior's prompt; without the prior, which would score
    all its items alike): each prompt's KV once gives the items,
    in the order, of one KV copy per row, and of transformers' loop; it prefills fewer tokens
    (the template's beginning comes from the prior's prompt, nothing is padded), and the rows
    it counts are the rows the model ran (a batched prefill's padding included)."""
    model, tok = peaky_lm
    if kv_heads == "grouped":
        model = _gqa_lm(tok, tiny_lm_dir)
    texts = catalog_texts(120, seed=5)
    trie = CatalogTrie.from_texts(tok, texts)
    prompts, hist = random_users(texts, 10, seed=3)
    if not prior_weight:  # with the prior, its own prompt would score every item 0: all ties
        prompts[-1], hist[-1] = prompt_of([]), []
    settings = dict(num_beams=4, num_return=4, batch_size=5, prior_weight=prior_weight,
                    grounded_score=score)
    shared, copied = (grounded(model, tok, trie, shared_prompts=s, **settings) for s in (True, False))
    theirs = grounded(model, tok, trie, grounded_search="transformers", **settings)
    lengths = [len(ids) for ids in shared.encode(prompts)]
    assert len(set(lengths[:5])) > 2 and len(set(lengths[5:])) > 2  # padding in each batch
    shared.prior_prompt_cache()  # made once per model, outside the counts
    with _RowCounter(model) as rows:
        got = shared.generate(prompts, exclude=hist)
    want = copied.generate(prompts, exclude=hist)
    assert got == want == theirs.generate(prompts, exclude=hist)
    assert sum(len(row) for row in got) > 3 * len(prompts)
    if score == "beam":  # (re-ranking runs the model again)
        assert rows.rows == (shared.work.logit_rows + shared.work.beam_rows
                             + shared.work.prior_rows)
    # The same beams; the prior's rows of a prompt that joins later (beam order: 5 prompts at
    # a time) are not shared with those of the prompts ahead of it.
    assert shared.work.beam_rows == copied.work.beam_rows
    if prior_weight:
        assert shared.work.prior_rows >= copied.work.prior_rows > 0
    else:
        assert shared.work.prior_rows == copied.work.prior_rows == 0
    assert shared.work.prefill_tokens < copied.work.prefill_tokens
    assert shared.work.step_keys < copied.work.step_keys


def test_shared_prompt_kv_without_a_common_beginning(peaky_lm: tuple[Any, Any]) -> None:
    """A prior prompt that shares no token with the users' prompts: every prompt is prefilled
    in full (the four in one pass, padded to the longest), and the search is still the
    copied-KV one."""
    model, tok = peaky_lm
    texts = catalog_texts(80, seed=2)
    trie = CatalogTrie.from_texts(tok, texts)
    prompts, hist = random_users(texts, 4, seed=8)
    cfg = GenerateConfig(constrain="catalog", prior_weight=1.0, batch_size=4)
    shared, copied = (HFGenerator(model, tok, cfg, trie=trie, prior_prompt="Title: gel\n",
                                  shared_prompts=s) for s in (True, False))
    assert shared.encode(prompts)[0][0] != shared.prior_prompt_ids()[0]
    assert shared.generate(prompts, exclude=hist) == copied.generate(prompts, exclude=hist)
    longest = max(len(ids) - 1 for ids in shared.encode(prompts))
    assert shared.work.prefill_tokens == len(prompts) * longest


def test_shared_prompt_kv_needs_full_attention_everywhere(peaky_lm: tuple[Any, Any]) -> None:
    """A sliding-window model is not supported (its search copies the KV per row); the Llama
    is."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model, _ = peaky_lm
    assert supported(model)
    small = dict(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, intermediate_size=32)
    assert supported(Qwen2ForCausalLM(Qwen2Config(**small)))
    sliding = Qwen2Config(**small, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    assert not supported(Qwen2ForCausalLM(sliding))


def test_shared_prompt_kv_under_bf16_autocast(peaky_lm: tuple[Any, Any]) -> None:
    """generate.bf16: the prompts' KV and the rows' own come out of autocast in other dtypes
    than the queries; the search still runs and grounds every text in the catalog, outside the
    user's history."""
    model, tok = peaky_lm
    texts = catalog_texts(60, seed=4)
    trie = CatalogTrie.from_texts(tok, texts)
    prompts, hist = random_users(texts, 3, seed=6)
    gen = grounded(model, tok, trie, prior_weight=1.0, bf16=True)
    out = gen.generate(prompts, exclude=hist)
    assert gen.work.beam_rows > 0 and all(out)
    assert all(t in texts and texts.index(t) not in h for row, h in zip(out, hist) for t in row)


@pytest.mark.parametrize("prior_weight", [0.0, 1.0])
def test_prompts_joining_as_others_finish_get_the_same_search(peaky_lm: tuple[Any, Any],
                                                              prior_weight: float) -> None:
    """pool = n: at most n prompts at a time, the next joining as one is final (so rows of
    different depths, and longer prompts than the slots hold, share a step): every prompt gets
    the items of the search that runs them all at once, and no step runs more than n prompts'
    rows."""
    model, tok = peaky_lm
    texts = catalog_texts(120, seed=5)
    trie = CatalogTrie.from_texts(tok, texts)
    prompts, hist = random_users(texts, 7, seed=12)
    gen = grounded(model, tok, trie, num_beams=3, num_return=3, prior_weight=prior_weight)
    ids = gen.encode(prompts)
    assert sorted(map(len, ids)) != list(map(len, ids))  # a later prompt may be longer
    excl = [trie.exclusion(h) for h in hist]
    with torch.inference_mode():
        want = grounded_beam_search(gen, ids, excl)
        assert want is not None
        for pool in (1, 2, 5):
            with _RowCounter(model) as rows:
                got = grounded_beam_search(gen, ids, excl, pool=pool)
            assert got is not None and got.tokens == want.tokens
            assert rows.most <= pool * 2 * 3 and got.work.beam_rows == want.work.beam_rows


def test_prompts_prefilled_together_get_their_own_kv(peaky_lm: tuple[Any, Any]) -> None:
    """Prompts of different lengths prefilled in one padded pass, after the head they share,
    hold the KV each gets alone (a prompt that is all head, one that shares none of it)."""
    model, tok = peaky_lm
    texts = catalog_texts(40, seed=4)
    gen = grounded(model, tok, CatalogTrie.from_texts(tok, texts), prior_weight=1.0)
    head_ids = gen.prior_prompt_ids()[:-1]
    head = cache_layers(gen.prior_prompt_cache())
    users = [ids[:-1] for ids in gen.encode([prompt_of(texts[:3]), prompt_of(texts[5:6]),
                                             prompt_of(texts[7:12])])]
    prompts = [*users, head_ids[:4], tok("Title: gel")["input_ids"]]
    assert len({len(p) for p in prompts}) == len(prompts)
    with torch.inference_mode():
        together = prefill_after_head(model, prompts, head_ids, head)
        alone = [prefill_after_head(model, [p], head_ids, head)[0] for p in prompts]
    assert [made.shared for made in together] == [made.shared for made in alone]
    assert together[3].shared == 4 and together[4].shared == 0
    # The users' prompts share the same head, so they run in one pass padded to the longest.
    longest = max(len(p) for p in users) - together[0].shared
    assert [made.run for made in together] == [longest] * 3 + [0, len(prompts[4])]
    for p, got, want in zip(prompts, (m.layers for m in together), (m.layers for m in alone)):
        for (k, v), (k0, v0) in zip(got, want):
            assert k.shape == k0.shape == (1, k0.shape[1], len(p), k0.shape[3])
            torch.testing.assert_close(k, k0, rtol=0, atol=1e-5)
            torch.testing.assert_close(v, v0, rtol=0, atol=1e-5)
