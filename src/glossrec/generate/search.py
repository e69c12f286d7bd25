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
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from glossrec.config import GenerateConfig
from glossrec.generate.constrain import CatalogTrie, Exclusion

__all__ = ["Found", "SearchModel", "grounded_beam_search"]


class SearchModel(Protocol):
    """What grounded search needs of a generator (:class:`~glossrec.generate.hf.HFGenerator`
    offers it): the model, its catalog trie and settings, and three model-side steps."""

    model: Any
    """A causal LM called with input_ids, attention_mask, position_ids and a KV cache."""
    trie: CatalogTrie | None
    cfg: GenerateConfig
    device: Any

    def pad_left(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids, attention mask) of token-id prompts, left-padded."""
        ...

    def prefill(self, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
        """KV cache of all but the last token of each row, or None when it cannot be made."""
        ...

    def prior_prompt_ids(self) -> list[int]:
        """Token ids of the empty-history prompt (the item prior of prior_weight)."""
        ...

    def max_new_tokens(self) -> int:
        """How many tokens a beam may write (the longest item, EOS included, at least)."""
        ...

_NONE: dict[int, int] = {}


@dataclass
class Found:
    """A batch's search result: per prompt its finished hypotheses (new tokens, EOS included),
    best first; the prompts left-padded as the search ran them, and their prefill (all but
    the last token) when asked for (re-ranking reuses it), else None."""

    tokens: list[list[tuple[int, ...]]]
    input_ids: torch.Tensor
    mask: torch.Tensor
    cache: Any


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
    prompt), for re-ranking.
    """
    trie = gen.trie
    assert trie is not None
    cfg = gen.cfg
    k, w, eos = cfg.num_beams, float(cfg.prior_weight), trie.eos_id
    n_users = len(batch)
    rows_in = [list(p) for p in batch]
    if w > 0:
        rows_in.append(gen.prior_prompt_ids())
    input_ids, mask = gen.pad_left(rows_in)
    if input_ids.shape[1] < 2:
        return None
    input_ids, mask = input_ids.to(gen.device), mask.to(gen.device)
    cache = gen.prefill(input_ids, mask)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    kept = None
    if keep_prompt_cache:
        kept = copy.deepcopy(cache)
        if w > 0:
            kept.batch_select_indices(torch.arange(n_users, device=gen.device))
    prompts = [_Prompt([_Beam((), np.float32(0.0), 0, row=u)],
                       exclusions[u] if exclusions is not None else _NONE, [])
               for u in range(n_users)]
    prompt_mask = mask[:, :-1]
    lengths = mask.sum(1)
    feed = input_ids[:, -1].tolist()
    parents = list(range(len(rows_in)))
    prior_rows: dict[tuple[int, ...], int] = {(): n_users} if w > 0 else {}
    active = list(range(n_users))
    max_new = gen.max_new_tokens()
    for step in range(max_new):
        # One forward pass: one new token for every live beam and every live prior prefix.
        idx = torch.tensor(parents, dtype=torch.long, device=gen.device)
        cache.batch_select_indices(idx)
        prompt_mask, lengths = prompt_mask[idx], lengths[idx]
        n = len(parents)
        attn = torch.cat([prompt_mask, prompt_mask.new_ones((n, step + 1))], dim=1)
        out = gen.model(input_ids=torch.tensor(feed, device=gen.device)[:, None],
                        attention_mask=attn, position_ids=(lengths - 1 + step)[:, None],
                        cache=cache, use_cache=True, logits_to_keep=1)
        logp = out.logits[:, -1].float().log_softmax(-1)
        prior = logp.clamp(min=-1e4) * w if w > 0 else None
        last = step == max_new - 1
        for u in active:
            _advance(prompts[u], logp, prior, prior_rows, trie, k, eos, step, last)
        active = [u for u in active if _still_open(prompts[u], k, step)]
        if not active:
            break
        # The next pass: live beams keep their parent's row; the prior follows their prefixes.
        parents, feed = [], []
        for u in active:
            for beam in prompts[u].beams:
                parents.append(beam.row)
                feed.append(beam.tokens[-1])
        if w > 0:
            prefixes = dict.fromkeys(b.tokens for u in active for b in prompts[u].beams)
            next_rows = {}
            for p in prefixes:
                next_rows[p] = len(parents)
                parents.append(prior_rows[p[:-1]])
                feed.append(p[-1])
            prior_rows = next_rows
        row = 0
        for u in active:
            for beam in prompts[u].beams:
                beam.row = row
                row += 1
    return Found([[toks for _, toks in p.finished[:cfg.num_return]] for p in prompts],
                 input_ids[:n_users], mask[:n_users], kept)


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
