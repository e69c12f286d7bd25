"""Catalog-grounded beam search in our own loop: transformers' beam search, minus dead rows.

Grounded search (``generate.constrain = "catalog"``) through ``model.generate`` forwards
num_beams rows per prompt at every step until the *whole batch* ends, and runs the item prior
(``prior_weight``) as a second forward pass. bench/search_cost.py measured that only 39% of
those beam rows were live. This loop runs the same search with:

- only live beams forwarded: a beam that can no longer reach an item is dropped, and a prompt
  leaves the batch as soon as its result is final;
- the prior in the same forward pass: each distinct live item prefix of the step is one more
  row on the empty-history prompt, extended by one token per step like a beam; or, with
  ``generate.prior_table``, no rows at all: the prior read from a table made once per model
  and catalog (:mod:`glossrec.generate.prior_table`);
- each prompt's KV once (:mod:`glossrec.generate.shared_kv`), not once per row: a row keeps
  only its own new tokens, and attends to its prompt and to them in two parts. A user's prompt
  is prefilled from the KV of the template's beginning, which it shares with the
  empty-history prompt, whose KV is made once per model (with the next prompts to join, in one
  pass right-padded to the longest: generate() sorts prompts by length). A model whose attention cannot
  run that way (:func:`~glossrec.generate.shared_kv.supported`, or ``shared_prompts`` off)
  keeps a copy of its prompt's KV per row in a transformers cache, the prior's prompt one more
  row of the batch's prefill, padded to its width.

Every search counts what it ran (:class:`SearchWork`: prefill tokens, beam and prior rows, keys
attended), for FLOP bounds.

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

The shared prompt KV is the same computation in another order (floating-point sums differ in
their last bits, as they do between batches padded differently): the tests check that both KV
layouts give the same items in the same order, and bench/grounded.py (arms grounded-prior and
grounded-prior-copied) compares them on real users.
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
from glossrec.generate.prior_table import PriorTable
from glossrec.generate.shared_kv import (
    Layers, PromptKV, SharedPrefixKV, cache_layers, prefill_after_head, supported,
)

__all__ = ["Found", "SearchModel", "SearchWork", "grounded_beam_search", "shares_prompts"]


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

    def prior_table(self) -> PriorTable | None:
        """The prior per trie node, up to date with the trie, or None: the search then runs
        the prior as rows of its steps."""
        ...


_NONE: dict[int, int] = {}

PREFILL_ROWS = 4
"""Prompts prefilled in one forward pass: the one joining the search and the next ones to join
(a pass of one ~100-token prompt runs its matmuls well below the rate of a larger one; more
prompts per pass pad more: bench/prefill.py)."""


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
                         keep_prompt_cache: bool = False, pool: int | None = None
                         ) -> Found | None:
    """Grounded beam search of token-id prompts (gen.trie, gen.cfg).

    Returns per prompt its finished hypotheses, best first, at most cfg.num_return, or None when
    the model's KV cache cannot be reused (the caller then runs transformers' generate).
    `keep_prompt_cache`: also return the prompts' prefill (all but the last token, one row per
    prompt, left-padded), for re-ranking. `pool`: with each prompt's KV once, search at most this
    many prompts at a time, the next one (in the given order) joining as soon as one is final,
    so that every step runs about as many rows (None: all at once; so too with one KV copy per
    row, and with `keep_prompt_cache`).
    """
    trie = gen.trie
    assert trie is not None
    cfg = gen.cfg
    k, w, eos = cfg.num_beams, float(cfg.prior_weight), trie.eos_id
    n_users = len(batch)
    if min(len(p) for p in batch) < 2:
        return None
    work = SearchWork()
    table = gen.prior_table() if w > 0 else None
    prior_rows_on = w > 0 and table is None
    """The prior as rows of every step (else read from `table`, or no prior)."""
    steps: _Steps | None
    head = gen.prior_prompt_cache() if shares_prompts(gen) else None
    if head is not None:
        steps = _SharedPrompts(gen, batch, prior_rows_on, head, keep_prompt_cache, work)
    else:
        steps = _CopiedPrompts.start(gen, batch, prior_rows_on, keep_prompt_cache, work)
    if steps is None:
        return None
    if pool is None or keep_prompt_cache or head is None:
        pool = n_users
    prompts = [_Prompt([_Beam((), np.float32(0.0), 0)],
                       exclusions[u] if exclusions is not None else _NONE, [])
               for u in range(n_users)]
    waiting = list(range(n_users - 1, -1, -1))
    active: list[int] = []
    prior_rows: dict[tuple[int, ...], int] = {}
    """Item prefix -> its row on the empty-history prompt (owner n_users) in this step,
    counted from prior_start, the first such row."""
    prior_start = 0
    max_new = gen.max_new_tokens()
    while waiting or active:
        while waiting and len(active) < pool:
            active.append(waiting.pop())
            steps.admit(active[-1])
        # One forward pass: one new token for every live beam and every live prior prefix; a
        # beam keeps its parent's row (-1: a prompt's first), the prior follows the prefixes.
        parents, feed, owners, depths = [], [], [], []
        for u in active:
            for beam in prompts[u].beams:
                parents.append(beam.row)
                feed.append(beam.tokens[-1] if beam.tokens else steps.last_tokens[u])
                owners.append(u)
                depths.append(len(beam.tokens))
                beam.row = len(parents) - 1
        if prior_rows_on:
            # The prior's rows follow the beams'; prior_rows: prefix -> its place among them.
            rows: dict[tuple[int, ...], int] = {}
            start = len(parents)
            for p in dict.fromkeys(b.tokens for u in active for b in prompts[u].beams):
                rows[p] = len(parents) - start
                parents.append(prior_start + prior_rows[p[:-1]] if p else -1)
                feed.append(p[-1] if p else steps.last_tokens[n_users])
                owners.append(n_users)
                depths.append(len(p))
            prior_rows, prior_start = rows, start
        logits = steps.step(feed, owners, parents, depths)
        work.beam_rows += prior_start if prior_rows_on else len(owners)
        work.prior_rows += len(owners) - prior_start if prior_rows_on else 0
        logp = logits.float().log_softmax(-1)
        prior = logp[prior_start:].clamp(min=-1e4) * w if prior_rows_on else None
        still = []
        for u in active:
            step = len(prompts[u].beams[0].tokens)
            _advance(prompts[u], logp, prior, prior_rows, trie, k, eos, step, step == max_new - 1,
                     (table, w) if table is not None else None)
            if step < max_new - 1 and _still_open(prompts[u], k, step):
                still.append(u)
            else:
                steps.release(u)
        active = still
    work += steps.work()
    return Found([[toks for _, toks in p.finished[:cfg.num_return]] for p in prompts],
                 steps.input_ids, steps.mask, steps.kept, work)


def shares_prompts(gen: SearchModel) -> bool:
    """Whether grounded_beam_search keeps each prompt's KV once with `gen` (and so can take
    prompts joining as others finish)."""
    return bool(gen.shared_prompts and supported(gen.model)
                and gen.prior_prompt_cache() is not None)


class _Steps(Protocol):
    """Prompts prefilled, and forward passes of one new token per row."""

    last_tokens: list[int]
    """The token each prompt's first row runs: the prompts' last, then the prior's last."""
    input_ids: torch.Tensor
    mask: torch.Tensor
    """The users' prompts, left-padded (on the model's device)."""
    kept: Any
    """Their prefill (all but the last token) as a transformers cache, for re-ranking, or
    None."""

    def admit(self, user: int) -> None:
        """Prompt `user` joins the search (prefilled if it is not yet)."""
        ...

    def release(self, user: int) -> None:
        """Prompt `user`'s search is over."""
        ...

    def step(self, tokens: list[int], owners: list[int], parents: list[int],
             depths: list[int]) -> torch.Tensor:
        """Logits [rows, vocab] after `tokens`; row i belongs to prompt owners[i] (n_users:
        the prior's), continues row parents[i] of the last step (-1: the prompt's first row)
        and has written depths[i] tokens before this one."""
        ...

    def work(self) -> SearchWork:
        """The keys the steps attended (the prefill's work is counted as it runs)."""
        ...


class _SharedPrompts:
    """Each prompt's KV once (glossrec.generate.shared_kv): a user's prompt, prefilled when it
    joins (with the next few to join, in one forward pass), after the beginning it shares with
    the empty-history prompt, and that prompt's KV (made once per model) for the prior's rows."""

    def __init__(self, gen: SearchModel, batch: Sequence[Sequence[int]], with_prior: bool,
                 head: Any, keep: bool, work: SearchWork) -> None:
        self.gen, self.batch, self.n_users, self._work = gen, batch, len(batch), work
        self.head_ids = gen.prior_prompt_ids()
        self.head = cache_layers(head)
        self.users = PromptKV()
        groups = [self.users] + ([PromptKV([self.head])] if with_prior else [])
        self.kv = SharedPrefixKV(groups)
        self.last_tokens = [ids[-1] for ids in batch] + [self.head_ids[-1]]
        self.base = [len(ids) - 1 for ids in batch] + [len(self.head_ids) - 1]
        """Position of each prompt's last token."""
        input_ids, mask = gen.pad_left(batch)
        self.input_ids, self.mask = input_ids.to(gen.device), mask.to(gen.device)
        self._ready: dict[int, Layers] = {}
        """Prompts prefilled ahead of joining (users join in index order)."""
        self.kept = None
        if keep:
            for start in range(0, self.n_users, PREFILL_ROWS):
                self._prefill(range(start, min(start + PREFILL_ROWS, self.n_users)))
            for u in range(self.n_users):
                self.users.add(u, self._ready.pop(u))
            self.kept = self.users.left_padded(range(self.n_users), input_ids.shape[1] - 1)

    def _prefill(self, users: Sequence[int]) -> None:
        made = prefill_after_head(self.gen.model, [self.batch[u][:-1] for u in users],
                                  self.head_ids[:-1], self.head)
        for u, (layers, shared, run) in zip(users, made):
            self._ready[u] = layers
            self._work.prefill_tokens += run
            self._work.prefill_keys += (shared + run) * (shared + run + 1) // 2 - \
                shared * (shared + 1) // 2
            self._work.logit_rows += run > 0

    def admit(self, user: int) -> None:
        if user in self.users.slot:
            return
        if user not in self._ready:
            self._prefill([u for u in range(user, min(user + PREFILL_ROWS, self.n_users))
                           if u not in self._ready and u not in self.users.slot])
        self.users.add(user, self._ready.pop(user))

    def release(self, user: int) -> None:
        self.users.remove(user)

    def step(self, tokens: list[int], owners: list[int], parents: list[int],
             depths: list[int]) -> torch.Tensor:
        rows = [(0, u) if u < self.n_users else (1, 0) for u in owners]
        return self.kv.step(self.gen.model, tokens, rows, parents,
                            [self.base[u] + d for u, d in zip(owners, depths)])

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
        self.last_tokens = input_ids[:, -1].tolist()
        self.keys_read = 0
        self.steps = 0
        """Steps run: every prompt starts at the first (all are admitted at once)."""

    def admit(self, user: int) -> None:
        assert self.steps == 0, "one KV copy per row: every prompt joins at the start"

    def release(self, user: int) -> None:
        pass

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

    def step(self, tokens: list[int], owners: list[int], parents: list[int],
             depths: list[int]) -> torch.Tensor:
        # A prompt's first row continues its prefill row (the prior's is the last one).
        step, self.steps = self.steps, self.steps + 1
        idx = torch.tensor([p if p >= 0 else o for p, o in zip(parents, owners)],
                           dtype=torch.long, device=self.gen.device)
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
             last: bool, table: tuple[PriorTable, float] | None = None) -> None:
    """One beam-search step of one prompt: its candidates, finished and running beams.
    The prior: `prior`, the prior's rows only, `prior_rows` indexing them; or `table` (the
    table and prior_weight), read at the candidates' trie nodes; or neither."""
    rows, toks, prows, beam_of, nodes = [], [], [], [], []
    for b, beam in enumerate(p.beams):
        allowed = trie.allowed(beam.node, p.excl)
        rows += [beam.row] * len(allowed)
        toks += allowed
        beam_of += [b] * len(allowed)
        if prior is not None:
            prows += [prior_rows[beam.tokens]] * len(allowed)
        if table is not None:
            nodes += [trie.child(beam.node, t) for t in allowed]
    if not toks:
        p.beams = []
        return
    dev = logp.device
    r = torch.tensor(rows, device=dev)
    t = torch.tensor(toks, device=dev)
    cand = logp[r, t]
    if prior is not None:
        cand = cand - prior[torch.tensor(prows, device=dev), t]
    if table is not None:  # as the rows: clamped, times the weight, in fp32
        values = torch.from_numpy(table[0].edges(nodes)).to(dev).clamp(min=-1e4) * table[1]
        cand = cand - values
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
