"""Catalog-grounded beam search in our own loop: transformers' beam search, minus dead rows.

Grounded search (``generate.constrain = "catalog"``) through ``model.generate`` forwards
num_beams rows per prompt at every step until the *whole batch* ends, and runs the item prior
(``prior_weight``) as a second forward pass. bench/search_cost.py measured that only 39% of
those beam rows were live. This loop runs the same search with:

- only live beams forwarded: a beam that can no longer reach an item is dropped, and a prompt
  leaves the batch as soon as its result is final;
- the prior in the same forward pass: the empty-history prompt is one more row of the batch's
  prefill, and each distinct live item prefix of the step is one more row, extended by one
  token per step like a beam.

The search is transformers' (``GenerationMixin._beam_search``, length_penalty 1.0,
early_stopping False), in fp32 like it:

- a beam's candidate score is its score + log_softmax(logits)[token] - w * max(prior, -1e4),
  over the tokens the trie allows (the catalog minus the prompt's excluded items);
- per prompt, the best 2 x num_beams candidates (sorted) are kept; those of the first num_beams
  ranks that end in EOS (every one of them at the last step) are finished with score / new
  tokens; the best num_beams that do not end continue;
- finished hypotheses keep the best num_beams; a prompt is final once its best running score /
  new tokens cannot beat its worst finished one (or while a finished slot is empty, once no
  beam runs).

Where it departs from transformers, only when a prompt has fewer than 2 x num_beams live
candidates (a catalog this small, or beams deep in long titles): transformers fills its
candidate list with -1e9-scored copies (the padding beams of the first step, beams that just
ended). They can fill an empty finished slot with a copy of an item, or with an item whose EOS
came at rank num_beams or lower; here those slots stay empty. tests/generate/test_search.py
checks that the two give the same hypotheses in the same order whenever every prompt has
2 x num_beams live candidates at every step, and bench/grounded.py (arms grounded-prior and
grounded-prior-tf) compares them on real users.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch

from glossrec.config import GenerateConfig
from glossrec.generate.constrain import CatalogTrie, Exclusion
from glossrec.generate.shared_kv import (
    PromptKV, SharedPrefixKV, cache_layers, prefill_after_head, supported,
)

__all__ = ["Found", "SearchModel", "SearchWork", "grounded_beam_search"]


class SearchModel(Protocol):
    """What grounded search needs of a generator (:class:`~glossrec.generate.hf.HFGenerator`
    offers it): the model, its catalog trie and settings, and three model-side steps."""

    model: Any
    """A causal LM called with input_ids, attention_mask, position_ids and a KV cache."""
    trie: CatalogTrie | None
    cfg: GenerateConfig
    device: Any
    shared_prompts: bool
    """Keep each prompt's KV once (when the model allows it), not once per row."""

    def pad_left(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids, attention mask) of token-id prompts, left-padded."""
        ...

    def prefill(self, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
        """KV cache of all but the last token of each row, or None when it cannot be made."""
        ...

    def prior_prompt_ids(self) -> list[int]:
        """Token ids of the empty-history prompt (the item prior of prior_weight)."""
        ...

    def prior_prompt_cache(self) -> Any:
        """KV cache of the empty-history prompt but its last token (made once), or None."""
        ...

    def max_new_tokens(self) -> int:
        """How many tokens a beam may write (the longest item, EOS included, at least)."""
        ...


_NONE: dict[int, int] = {}


@dataclass
class SearchWork:
    """What searches ran through the model, for FLOP counts: tokens (rows of one token) and
    the keys their attention read (summed over tokens; per layer and head)."""

    prefill_tokens: int = 0
    """Prompt tokens run by prefills (padding included where a prefill pads)."""
    prefill_keys: int = 0
    beam_rows: int = 0
    """One new token of one beam in one step."""
    prior_rows: int = 0
    """One new token of one item prefix on the empty-history prompt in one step."""
    step_keys: int = 0
    logit_rows: int = 0
    """Rows projected onto the vocabulary besides the steps' (one per prefill call)."""

    def __iadd__(self, other: SearchWork) -> SearchWork:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


@dataclass
class Found:
    """A batch's search result: per prompt its finished hypotheses (new tokens, EOS included),
    best first; the prompts left-padded, and their prefill (all but the last token, left-padded
    the same way) when asked for (re-ranking reuses it), else None; what the search ran."""

    tokens: list[list[tuple[int, ...]]]
    input_ids: torch.Tensor
    mask: torch.Tensor
    cache: Any
    work: SearchWork


@dataclass
class _Beam:
    tokens: tuple[int, ...]
    score: np.float32
    node: int
    """Trie node after `tokens` (a non-final node: an item's EOS ends it as a finished one)."""
    row: int = -1
    """Its row in the step's forward pass."""


@dataclass
class _Prompt:
    """One prompt's search state."""

    beams: list[_Beam]
    excl: Exclusion
    finished: list[tuple[np.float32, tuple[int, ...]]]


def grounded_beam_search(gen: SearchModel, batch: Sequence[Sequence[int]],
                         exclusions: Sequence[Exclusion] | None,
                         keep_prompt_cache: bool = False) -> Found | None:
    """Grounded beam search of one batch of token-id prompts (gen.trie, gen.cfg).

    Returns per prompt its finished hypotheses, best first, at most cfg.num_return, or None when
    the model's KV cache cannot be reused (the caller then runs transformers' generate).
    `keep_prompt_cache`: also return the prompts' prefill (all but the last token, one row per
    prompt, left-padded), for re-ranking.
    """
    trie = gen.trie
    assert trie is not None
    cfg = gen.cfg
    k, w, eos = cfg.num_beams, float(cfg.prior_weight), trie.eos_id
    n_users = len(batch)
    if min(len(p) for p in batch) < 2:
        return None
    work = SearchWork()
    steps: _Steps | None = None
    head = gen.prior_prompt_cache() if gen.shared_prompts and supported(gen.model) else None
    if head is not None:
        steps = _SharedPrompts(gen, batch, w > 0, head, keep_prompt_cache, work)
    else:
        steps = _CopiedPrompts.start(gen, batch, w > 0, keep_prompt_cache, work)
    if steps is None:
        return None
    prompts = [_Prompt([_Beam((), np.float32(0.0), 0, row=u)],
                       exclusions[u] if exclusions is not None else _NONE, [])
               for u in range(n_users)]
    feed = steps.first_tokens
    owners = list(range(len(feed)))
    """The prompt of each row: a user's, or n_users for the empty-history prompt (the prior)."""
    parents = list(range(len(feed)))
    prior_rows: dict[tuple[int, ...], int] = {(): n_users} if w > 0 else {}
    active = list(range(n_users))
    max_new = gen.max_new_tokens()
    for step in range(max_new):
        # One forward pass: one new token for every live beam and every live prior prefix.
        logits = steps.step(feed, owners, parents, step)
        work.beam_rows += sum(o < n_users for o in owners)
        work.prior_rows += sum(o == n_users for o in owners)
        logp = logits.float().log_softmax(-1)
        prior = logp.clamp(min=-1e4) * w if w > 0 else None
        last = step == max_new - 1
        for u in active:
            _advance(prompts[u], logp, prior, prior_rows, trie, k, eos, step, last)
        active = [u for u in active if _still_open(prompts[u], k, step)]
        if not active:
            break
        # The next pass: live beams keep their parent's row; the prior follows their prefixes.
        parents, feed, owners = [], [], []
        for u in active:
            for beam in prompts[u].beams:
                parents.append(beam.row)
                feed.append(beam.tokens[-1])
                owners.append(u)
        if w > 0:
            prefixes = dict.fromkeys(b.tokens for u in active for b in prompts[u].beams)
            next_rows = {}
            for p in prefixes:
                next_rows[p] = len(parents)
                parents.append(prior_rows[p[:-1]])
                feed.append(p[-1])
                owners.append(n_users)
            prior_rows = next_rows
        row = 0
        for u in active:
            for beam in prompts[u].beams:
                beam.row = row
                row += 1
    work += steps.work()
    return Found([[toks for _, toks in p.finished[:cfg.num_return]] for p in prompts],
                 steps.input_ids, steps.mask, steps.kept, work)


class _Steps(Protocol):
    """One batch's prompts prefilled, and forward passes of one new token per row."""

    first_tokens: list[int]
    """The token each prompt's first row runs: the prompts' last, the prior's last."""
    input_ids: torch.Tensor
    mask: torch.Tensor
    """The users' prompts, left-padded (on the model's device)."""
    kept: Any
    """Their prefill (all but the last token) as a transformers cache, for re-ranking, or
    None."""

    def step(self, tokens: list[int], owners: list[int], parents: list[int], step: int
             ) -> torch.Tensor:
        """Logits [rows, vocab] after `tokens`; row i continues row parents[i] of the last
        step and belongs to prompt owners[i]."""
        ...

    def work(self) -> SearchWork:
        """The prefill's work and the keys the steps attended."""
        ...


class _SharedPrompts:
    """Each prompt's KV once (glossrec.generate.shared_kv): the users' prompts, each prefilled
    alone after the beginning it shares with the empty-history prompt, and that prompt's KV
    (made once per model) for the prior's rows."""

    def __init__(self, gen: SearchModel, batch: Sequence[Sequence[int]], with_prior: bool,
                 head: Any, keep: bool, work: SearchWork) -> None:
        self.gen, self.n_users = gen, len(batch)
        head_ids = gen.prior_prompt_ids()
        head_layers = cache_layers(head)
        prompts = []
        for ids in batch:
            layers, shared = prefill_after_head(gen.model, ids[:-1], head_ids[:-1], head_layers)
            prompts.append(layers)
            run = len(ids) - 1 - shared
            work.prefill_tokens += run
            work.prefill_keys += (len(ids) - 1) * len(ids) // 2 - shared * (shared + 1) // 2
            work.logit_rows += run > 0
        users = PromptKV(prompts)
        input_ids, mask = gen.pad_left(batch)
        self.input_ids, self.mask = input_ids.to(gen.device), mask.to(gen.device)
        self.kept = users.left_padded(input_ids.shape[1] - 1) if keep else None
        groups = [users] + ([PromptKV([head_layers])] if with_prior else [])
        self.kv = SharedPrefixKV(groups)
        self.first_tokens = [ids[-1] for ids in batch] + ([head_ids[-1]] if with_prior else [])
        self.base = [len(ids) - 1 for ids in batch] + [len(head_ids) - 1]
        """Position of each prompt's last token."""

    def step(self, tokens: list[int], owners: list[int], parents: list[int], step: int
             ) -> torch.Tensor:
        rows = [(0, u) if u < self.n_users else (1, 0) for u in owners]
        return self.kv.step(self.gen.model, tokens, rows, parents if step else None,
                            [self.base[u] + step for u in owners])

    def work(self) -> SearchWork:
        return SearchWork(step_keys=self.kv.keys_read)


class _CopiedPrompts:
    """Every row its own copy of its prompt's KV in a transformers cache, rows selected at each
    step; the empty-history prompt is one more row of the batch's prefill, padded to its width.
    For models whose attention :func:`~glossrec.generate.shared_kv.supported` refuses."""

    def __init__(self, gen: SearchModel, cache: Any, input_ids: torch.Tensor, mask: torch.Tensor,
                 kept: Any, n_users: int) -> None:
        self.gen, self.cache, self.kept = gen, cache, kept
        self.input_ids, self.mask = input_ids[:n_users], mask[:n_users]
        self.prompt_mask, self.lengths = mask[:, :-1], mask.sum(1)
        self.first_tokens = input_ids[:, -1].tolist()
        self.keys_read = 0

    @classmethod
    def start(cls, gen: SearchModel, batch: Sequence[Sequence[int]], with_prior: bool,
              keep: bool, work: SearchWork) -> _CopiedPrompts | None:
        """The batch prefilled, or None when the model's cache cannot be reused."""
        rows_in = [list(p) for p in batch] + ([gen.prior_prompt_ids()] if with_prior else [])
        input_ids, mask = gen.pad_left(rows_in)
        input_ids, mask = input_ids.to(gen.device), mask.to(gen.device)
        cache = gen.prefill(input_ids, mask)
        if cache is None or not hasattr(cache, "batch_select_indices"):
            return None
        rows, width = input_ids.shape[0], input_ids.shape[1] - 1
        work.prefill_tokens += rows * width
        work.prefill_keys += rows * width * (width + 1) // 2
        work.logit_rows += rows
        kept = None
        if keep:
            kept = copy.deepcopy(cache)
            if with_prior:
                kept.batch_select_indices(torch.arange(len(batch), device=gen.device))
        return cls(gen, cache, input_ids, mask, kept, len(batch))

    def step(self, tokens: list[int], owners: list[int], parents: list[int], step: int
             ) -> torch.Tensor:
        idx = torch.tensor(parents, dtype=torch.long, device=self.gen.device)
        self.cache.batch_select_indices(idx)
        self.prompt_mask, self.lengths = self.prompt_mask[idx], self.lengths[idx]
        n = len(parents)
        attn = torch.cat([self.prompt_mask, self.prompt_mask.new_ones((n, step + 1))], dim=1)
        self.keys_read += attn.shape[1] * n
        out = self.gen.model(input_ids=torch.tensor(tokens, device=self.gen.device)[:, None],
                             attention_mask=attn, position_ids=(self.lengths - 1 + step)[:, None],
                             cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def work(self) -> SearchWork:
        return SearchWork(step_keys=self.keys_read)


def _advance(p: _Prompt, logp: torch.Tensor, prior: torch.Tensor | None,
             prior_rows: dict[tuple[int, ...], int], trie: Any, k: int, eos: int, step: int,
             last: bool) -> None:
    """One beam-search step of one prompt: its candidates, finished and running beams."""
    rows, toks, prows, beam_of = [], [], [], []
    for b, beam in enumerate(p.beams):
        allowed = trie.allowed(beam.node, p.excl)
        rows += [beam.row] * len(allowed)
        toks += allowed
        beam_of += [b] * len(allowed)
        if prior is not None:
            prows += [prior_rows[beam.tokens]] * len(allowed)
    if not toks:
        p.beams = []
        return
    dev = logp.device
    r = torch.tensor(rows, device=dev)
    t = torch.tensor(toks, device=dev)
    cand = logp[r, t]
    if prior is not None:
        cand = cand - prior[torch.tensor(prows, device=dev), t]
    cand = cand + torch.tensor([p.beams[b].score for b in beam_of], dtype=torch.float32,
                               device=dev)
    top = torch.topk(cand, k=min(2 * k, len(toks)))
    running: list[_Beam] = []
    new_len = np.float32(step + 1)
    for rank, (score, i) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
        score = np.float32(score)
        if not math.isfinite(score):
            break
        beam, tok = p.beams[beam_of[i]], toks[i]
        hits = tok == eos or last
        if hits and rank < k:
            p.finished.append((np.float32(score / new_len), beam.tokens + (tok,)))
        elif not hits and len(running) < k:
            running.append(_Beam(beam.tokens + (tok,), score,
                                 trie.child(beam.node, tok), row=beam.row))
    # Stable: an earlier finished hypothesis stays ahead of a later one of the same score.
    p.finished = sorted(p.finished, key=lambda f: -f[0])[:k]
    p.beams = running


def _still_open(p: _Prompt, k: int, step: int) -> bool:
    """transformers' early-stop heuristic (early_stopping False, length_penalty 1.0): go on
    while the best running score / new tokens beats the worst finished score (-1e9 while a
    finished slot is empty)."""
    if not p.beams:
        return False
    worst = p.finished[-1][0] if len(p.finished) >= k else np.float32(-1e9)
    return bool(p.beams[0].score / np.float32(step + 1) > worst)
