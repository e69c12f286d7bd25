"""Transformers beam search, batched by prompt length, with the GLoSS paper's settings.

Paper (reference code): 5 beams, 5 returned sequences, no sampling, at most 50 new tokens, left
padding, prompts cut from the left to (1024 - 50) tokens. Prompts are grouped by token length so
a batch pads little, and results come back in input order. In fp32 a batch gives the same texts
as one prompt at a time: left padding is masked and position ids come from the attention mask
(transformers' generate does both), which tests/generate checks.

Shared prefill: transformers' beam search copies each prompt num_beams times *before* the first
forward pass, so the prompt (a few hundred tokens, against 50 new ones) is encoded 5 times. We
encode it once, copy its KV cache to the beams, and let generate continue from the cache. Same
computation, same texts (bench/generation.py checks them against plain generate); prefill FLOPs
drop 5x, which on CPU is most of the time.

Grounded search (``generate.constrain = "catalog"``): a :class:`~glossrec.generate.constrain.
CatalogTrie` limits each beam to catalog item texts, minus the user's excluded items; the texts
returned are the items' catalog texts (fewer than num_return when fewer distinct items finish).
``grounded_score`` "length"/"pmi" re-rank them by one teacher-forced pass over the returned
items that reuses the prompt's prefill (no ``output_scores``, which the probe measured at 3.7 GB
peak against 1.1 GB); the empty-history prior of "pmi" is cached per item text.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from glossrec.config import PAPER_TEMPLATE, GenerateConfig
from glossrec.errors import ConfigError
from glossrec.generate.base import encode_prompts, postprocess
from glossrec.generate.constrain import CatalogTrie
from glossrec.generate.prior_table import PriorTable
from glossrec.generate.search import SearchWork, grounded_beam_search, shares_prompts

log = logging.getLogger(__name__)

_PRIOR_ROWS = 64
"""Prefixes whose prior is run in full per forward pass (one next-token row each), when the
model's cache cannot be extended."""

_SCORE_ROWS = 8
"""Returned items scored per forward pass: bounds the (rows x item tokens x vocab) logits
(SmolLM2, 95-token items: 8 rows = 150 MB)."""

T = TypeVar("T")

__all__ = ["HFGenerator", "newline_token_ids", "grounded_score", "rank_by"]


def newline_token_ids(tokenizer: Any) -> list[int]:
    """Ids of every token whose text contains a newline (the end of the first item line)."""
    ids = []
    for i in range(len(tokenizer)):
        if "\n" in tokenizer.decode([i], skip_special_tokens=False):
            ids.append(i)
    return ids


def _device(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(model.parameters()).device


class HFGenerator:
    """Beam search with a (possibly LoRA-wrapped) transformers causal LM.

    `model` and `tokenizer` are plain transformers/peft objects, so tests can pass a tiny model.
    """

    def __init__(self, model: Any, tokenizer: Any, cfg: GenerateConfig | None = None,
                 max_prompt_tokens: int = 1024 - 50, share_prefill: bool = True,
                 trie: CatalogTrie | None = None, prior_prompt: str | None = None,
                 shared_prompts: bool = True, prior_table_file: Path | None = None,
                 prior_table_meta: Mapping[str, Any] | None = None) -> None:
        """`trie`: the catalog to ground on (required iff cfg.constrain == "catalog");
        `prior_prompt`: the prompt with an empty history, for grounded_score = "pmi";
        `shared_prompts`: glossrec's grounded search keeps each prompt's KV once (False: one
        copy per beam, as transformers' cache does; for comparisons); `prior_table_file`: where
        the prior table (generate.prior_table) is kept between runs, valid for the model and
        prompt that `prior_table_meta` names (glossrec.fingerprint.prior_table_inputs)."""
        self.cfg = cfg or GenerateConfig()
        if max_prompt_tokens < 1:
            raise ConfigError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        if (self.cfg.constrain == "catalog") != (trie is not None):
            raise ConfigError('generate.constrain = "catalog" needs a catalog trie, and a trie '
                              f'needs constrain = "catalog" (got {self.cfg.constrain!r})')
        self.trie = trie
        self.prior_prompt = (prior_prompt if prior_prompt is not None
                             else _empty_prompt(PAPER_TEMPLATE))
        self._prior: dict[str, float] = {}
        """log p(item text | prior_prompt): it does not depend on the user."""
        self._prior_ids: list[int] | None = None
        self._prior_kv: Any = None
        """prior_prompt's ids and KV (all but its last token), made at the first prior pass."""
        self._prior_root: tuple[Any, torch.Tensor] | None = None
        """KV of the whole prior_prompt and log p(first item token | it) (prior_weight)."""
        self._table: PriorTable | None = None
        """The prior per trie node (generate.prior_table), made at the first search."""
        self.prior_table_file = prior_table_file
        self.prior_table_meta = {"prior_prompt": self.prior_prompt, **(prior_table_meta or {})}
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError("the tokenizer has no EOS token: generation could not stop")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.share_prefill = share_prefill
        self.shared_prompts = share_prefill and shared_prompts
        self.work = SearchWork()
        """What glossrec's grounded searches ran so far (for FLOP counts)."""
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.device = _device(model)
        # Grounded beams end at the item's EOS; a newline stop could cut an item short.
        newline = self.cfg.stop_at_newline and trie is None
        stop = [eos] + (newline_token_ids(tokenizer) if newline else [])
        self.stop_ids = sorted(set(stop), key=stop.index)

    def generation_kwargs(self) -> dict[str, Any]:
        """The paper's settings, explicit so a model's own generation_config cannot change them."""
        c = self.cfg
        return dict(
            num_beams=c.num_beams, num_return_sequences=c.num_return, do_sample=False,
            max_new_tokens=self.max_new_tokens(), length_penalty=1.0, early_stopping=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.stop_ids if len(self.stop_ids) > 1 else self.stop_ids[0],
            use_cache=True,
        )

    def max_new_tokens(self) -> int:
        """cfg.max_new_tokens; grounded: raised to the longest item (EOS included) so that no
        item is cut short (the trie's, at the time of the call: the live catalog changes)."""
        if self.trie is None:
            return self.cfg.max_new_tokens
        return max(self.cfg.max_new_tokens, self.trie.max_tokens)

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids per prompt, cut from the LEFT to max_prompt_tokens (special tokens kept)."""
        return encode_prompts(self.tokenizer, prompts, self.max_prompt_tokens)

    def generate(self, prompts: list[str],
                 exclude: Sequence[Sequence[int]] | None = None) -> list[list[str]]:
        """Texts per prompt, in input order. `exclude[i]`: trie keys (catalog positions) prompt i
        must not generate (its history); grounded search only, ignored when
        cfg.constrain_exclude_history is off."""
        if not prompts:
            return []
        exclude = self._check_exclude(prompts, exclude)
        encoded = self.encode(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        results: list[list[str]] = [[] for _ in prompts]
        # glossrec's search with each prompt's KV once takes them all, batch_size at a time
        size = len(order) if self._one_search(encoded) else self.cfg.batch_size
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            excl = [exclude[i] for i in idx] if exclude is not None else None
            for i, texts in zip(idx, self.generate_ids([encoded[i] for i in idx], excl)):
                results[i] = texts
        return results

    def _one_search(self, encoded: list[list[int]]) -> bool:
        """Whether glossrec's grounded search runs every prompt in one call (batch_size of
        them at a time, the next joining as one finishes); it needs each prompt's KV once, beam
        order (re-ranking keeps every prompt's prefill) and prompts of 2 tokens or more (else
        transformers' generate runs)."""
        return (self.trie is not None and self.share_prefill and self.cfg.grounded_score == "beam"
                and self.cfg.grounded_search == "glossrec" and min(map(len, encoded)) > 1
                and shares_prompts(self))

    def _check_exclude(self, prompts: list[str], exclude: Sequence[Sequence[int]] | None
                       ) -> Sequence[Sequence[int]] | None:
        if exclude is None:
            return None
        if self.trie is None:
            raise ValueError('exclude is for grounded generation (generate.constrain = "catalog")')
        if len(exclude) != len(prompts):
            raise ValueError(f"{len(exclude)} exclusion lists for {len(prompts)} prompts")
        return exclude if self.cfg.constrain_exclude_history else None

    def pad_left(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-id prompts -> (input_ids, attention_mask), left-padded to the longest, on CPU:
        every prompt ends at the last position, where generation and scoring continue."""
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
            mask[row, width - len(ids):] = 1
        return input_ids, mask

    def generate_ids(self, batch: list[list[int]],
                     exclude: Sequence[Sequence[int]] | None = None) -> list[list[str]]:
        """One left-padded batch of token-id prompts -> num_return post-processed texts each
        (grounded: up to num_return catalog texts, `exclude` as in :meth:`generate`)."""
        input_ids, mask = self.pad_left(batch)
        width = input_ids.shape[1]
        autocast = (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
                    if self.cfg.bf16 else nullcontext())
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        kwargs = self.generation_kwargs()
        grounded = self.trie is not None
        rescore = grounded and self.cfg.grounded_score != "beam"
        exclusions = None
        if self.trie is not None:
            exclusions = [self.trie.exclusion(e) for e in exclude] if exclude is not None else None
            kwargs["prefix_allowed_tokens_fn"] = self.trie.prefix_fn(width, exclusions)
            if self.cfg.prior_weight > 0:
                kwargs["logits_processor"] = LogitsProcessorList([_PriorGuidance(self, width)])
        if grounded and self.share_prefill and self.cfg.grounded_search == "glossrec":
            with torch.inference_mode(), autocast:
                found = grounded_beam_search(self, batch, exclusions, keep_prompt_cache=rescore,
                                             pool=self.cfg.batch_size)
                if found is not None:
                    self.work += found.work
                    return self._grounded(found.tokens, found.input_ids, found.mask, found.cache,
                                          exclude)
        kept = None
        with torch.inference_mode(), autocast:
            if self.share_prefill and width > 1:
                cache = self.prefill(input_ids, mask)
                if cache is not None:
                    # The prompt's KV, kept for rescoring (one prompt copy, not num_beams).
                    kept = copy.deepcopy(cache) if rescore else None
                    if self.cfg.num_beams > 1:
                        cache.batch_repeat_interleave(self.cfg.num_beams)
                    kwargs["cache"] = cache
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
            # Only the new tokens: the prompt is `width` tokens for every row (left padding).
            new = out[:, width:].cpu()
            if grounded:
                k = self.cfg.num_return
                rows = [new[r * k:(r + 1) * k].tolist() for r in range(len(batch))]
                return self._grounded(rows, input_ids, mask, kept, exclude)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        k = self.cfg.num_return
        return [[postprocess(t) for t in texts[r * k:(r + 1) * k]] for r in range(len(batch))]

    # ---- grounded search ----------------------------------------------------------------------

    def _grounded(self, rows: Sequence[Sequence[Sequence[int]]], input_ids: torch.Tensor,
                  mask: torch.Tensor, cache: Any, exclude: Sequence[Sequence[int]] | None
                  ) -> list[list[str]]:
        """Catalog texts of the distinct complete items among each prompt's returned beams
        (`rows[r]`: their new tokens), re-ranked by cfg.grounded_score. Dead beams (no complete
        item) are dropped."""
        assert self.trie is not None
        keys: list[list[int]] = []
        for r in range(input_ids.shape[0]):
            excluded = set(exclude[r]) if exclude is not None else set()
            found: list[int] = []
            for row in rows[r]:
                key = self.trie.resolve(row, excluded)
                if key is not None and key not in found:
                    found.append(key)
            keys.append(found)
        if self.cfg.grounded_score != "beam":
            keys = self._rerank(keys, input_ids, mask, cache)
        return [[self.trie.text(key) for key in row] for row in keys]

    def _rerank(self, keys: list[list[int]], input_ids: torch.Tensor, mask: torch.Tensor,
                cache: Any) -> list[list[int]]:
        assert self.trie is not None
        pairs = [(r, list(self.trie.tokens(key))) for r, row in enumerate(keys) for key in row]
        if not pairs:
            return keys
        scored = self.item_logprobs(input_ids, mask, pairs, cache)
        weight = self.cfg.rescore_prior_weight
        priors = (self.item_priors([key for row in keys for key in row])
                  if self.cfg.grounded_score == "pmi" and weight > 0 else None)
        out: list[list[int]] = []
        n = 0
        for row in keys:
            scores = []
            for j, key in enumerate(row):
                lp, count = scored[n + j]
                scores.append(grounded_score(self.cfg.grounded_score, lp, count,
                                             priors[n + j] if priors is not None else 0.0, weight))
            out.append(rank_by(row, scores))
            n += len(row)
        return out

    def item_logprobs(self, input_ids: torch.Tensor, mask: torch.Tensor,
                      pairs: Sequence[tuple[int, Sequence[int]]], cache: Any = None
                      ) -> list[tuple[float, int]]:
        """(sum log p(tokens | prompt row), len(tokens)) per (row, tokens) pair, teacher-forced.

        `input_ids`/`mask`: the left-padded prompts; `cache`: their prefill (all but the last
        token, one row per prompt, from :meth:`prefill`; consumed) or None to run the prompts
        again.
        """
        return self._by_chunks(input_ids, mask, pairs, cache, self._score_chunk)

    def _by_chunks(self, input_ids: torch.Tensor, mask: torch.Tensor,
                   pairs: Sequence[tuple[int, Sequence[int]]], cache: Any,
                   score: Callable[[torch.Tensor, torch.Tensor, Any, list[Sequence[int]]],
                                   list[T]], consume: bool = True) -> list[T]:
        """`score(prompt ids, mask, their cache, items)` of every (row, tokens) pair, in chunks
        of _SCORE_ROWS so the logits stay small, similar lengths together so they pad little.
        `cache`: the prompts' prefill, rows selected per chunk (consumed when `consume` and
        one chunk is enough; else copied), or None."""
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][1]))
        out: list[Any] = [None] * len(pairs)
        chunks = range(0, len(order), _SCORE_ROWS)
        for start in chunks:
            idx = order[start:start + _SCORE_ROWS]
            rows = torch.tensor([pairs[i][0] for i in idx], dtype=torch.long, device=self.device)
            part = None
            if cache is not None:
                part = cache if consume and len(chunks) == 1 else copy.deepcopy(cache)
                part.batch_select_indices(rows)
            items = [pairs[i][1] for i in idx]
            for i, res in zip(idx, score(input_ids[rows], mask[rows], part, items)):
                out[i] = res
        return out

    def _token_chunk(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any,
                     items: list[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(token | prompt row, item tokens before it) [rows, longest item] (padding: any
        value) and the items' mask, teacher-forced after each row's prompt."""
        # Continuation = last prompt token + item tokens (right padded); the prefix is the rest
        # of the prompt, either in `cache` or run again.
        width = 1 + max(len(t) for t in items)
        cont = torch.full((len(items), width), self.pad_id, dtype=torch.long, device=self.device)
        cmask = torch.zeros_like(cont)
        cont[:, 0] = ids[:, -1]
        cmask[:, 0] = 1
        for i, toks in enumerate(items):
            cont[i, 1:1 + len(toks)] = torch.tensor(list(toks), dtype=torch.long)
            cmask[i, 1:1 + len(toks)] = 1
        out = self._forward_after(ids[:, :-1], mask[:, :-1], cont, cmask, cache, keep=width)
        # One row at a time: a log_softmax of the whole chunk would double its logits' memory.
        logits, target = out.logits[:, :-1], cont[:, 1:, None]
        lp = torch.stack([logits[i].float().log_softmax(-1).gather(-1, target[i]).squeeze(-1)
                          for i in range(len(items))])
        return lp, cmask[:, 1:]

    def _score_chunk(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any,
                     items: list[Sequence[int]]) -> list[tuple[float, int]]:
        lp, cmask = self._token_chunk(ids, mask, cache, items)
        return [(float((lp[i] * cmask[i]).sum()), len(toks)) for i, toks in enumerate(items)]

    def prior_token_logprobs(self, items: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per item, log p(each token | prior_prompt, the item's tokens before it) (float32),
        teacher-forced in chunks of similar lengths after the prompt's KV (made once)."""
        with torch.inference_mode():
            return self._prior_token_logprobs(items)

    def _prior_token_logprobs(self, items: Sequence[Sequence[int]]) -> list[np.ndarray]:
        ids = torch.tensor([self.prior_prompt_ids()], dtype=torch.long, device=self.device)

        def per_token(ids: torch.Tensor, mask: torch.Tensor, cache: Any,
                      part: list[Sequence[int]]) -> list[np.ndarray]:
            lp, _ = self._token_chunk(ids, mask, cache, part)
            return [lp[row, :len(toks)].cpu().numpy() for row, toks in enumerate(part)]

        return self._by_chunks(ids, torch.ones_like(ids), [(0, t) for t in items],
                               self.prior_prompt_cache(), per_token, consume=False)

    def prior_table(self) -> PriorTable | None:
        """The catalog's prior per trie node, brought up to date with the trie (the items added
        since are scored now), with generate.prior_table and prior_weight > 0; else None."""
        if not (self.cfg.prior_table and self.cfg.prior_weight > 0 and self.trie is not None):
            return None
        if self._table is None:
            self._table = PriorTable()
            if self.prior_table_file is not None:
                n = self._table.load(self.prior_table_file, self.prior_table_meta)
                log.info("prior table: %d items read from %s", n, self.prior_table_file)
        todo = self._table.missing(self.trie)
        if todo:
            from tqdm.auto import tqdm

            from glossrec.progress import bars_on, say

            msg = (f"prior table: scoring {len(todo):,} items ({sum(len(t) for _, t in todo):,} "
                   "tokens) on the empty-history prompt")
            if len(todo) > 1000:  # long work: a progress line even without a terminal
                say(msg)
            else:
                log.info(msg)
            table, trie, path = self._table, self.trie, self.prior_table_file
            with tqdm(total=len(todo), desc="prior table", unit="item", dynamic_ncols=True,
                      disable=not bars_on(len(todo) > 1000)) as bar:

                def chunk_done(n: int) -> None:  # kept as it grows: a kill loses one chunk
                    bar.update(n)
                    if path is not None:
                        table.save(path, trie, self.prior_table_meta)

                table.update(trie, self.prior_token_logprobs, on_chunk=chunk_done, todo=todo)
        else:
            self._table.update(self.trie, self.prior_token_logprobs, todo=todo)
        return self._table

    def item_priors(self, keys: Sequence[int]) -> list[float]:
        """log p(item's tokens + EOS | empty-history prompt) per trie key: summed from the prior
        table when there is one (:meth:`prior_table`), else teacher-forced (:meth:`prior_logprobs`)."""
        assert self.trie is not None
        table = self.prior_table()
        if table is None:
            return self.prior_logprobs([self.trie.text(k) for k in keys])
        return [float(table.edges(self.trie.path(self.trie.tokens(k))).sum()) for k in keys]

    def prior_logprobs(self, texts: Sequence[str]) -> list[float]:
        """log p(text's tokens + EOS | prompt with an empty history), cached per text."""
        assert self.trie is not None
        missing = list(dict.fromkeys(t for t in texts if t not in self._prior))
        if missing:
            ids = torch.tensor([self.prior_prompt_ids()], dtype=torch.long, device=self.device)
            items = [list(t) for t in self.trie.encode(missing)]
            scored = self._by_chunks(ids, torch.ones_like(ids), [(0, t) for t in items],
                                     self.prior_prompt_cache(), self._score_chunk, consume=False)
            self._prior.update((t, lp) for t, (lp, _) in zip(missing, scored))
        return [self._prior[t] for t in texts]

    def prior_root(self) -> tuple[Any, torch.Tensor] | None:
        """(KV cache of the whole prior_prompt, log p(next token | it) [vocab]): where every
        PMI-guided search starts, made once (the model does not change). None when the model's
        cache cannot be reused: each search step then runs its prefixes in full."""
        ids = self.prior_prompt_ids()
        if self._prior_root is None and self._prior_kv is not None:
            cache = copy.deepcopy(self._prior_kv)  # the prompt but its last token, extended by it
            self._prior_root = (cache, self.prior_extend(cache, [0], ids[-1:]))
        return self._prior_root

    def prior_extend(self, cache: Any, parents: Sequence[int], tokens: Sequence[int]
                     ) -> torch.Tensor:
        """One step of the prior: `cache` holds prior_prompt + one equal-length prefix per row;
        keep rows `parents` (a row may repeat), append `tokens` (one per kept row), and return
        log p(next token | prior_prompt, prefix + token) [len(tokens), vocab]. The cache is
        updated in place, so a search runs one token per node, not the whole prefix again."""
        rows = torch.tensor(list(parents), dtype=torch.long, device=self.device)
        cache.batch_select_indices(rows)
        n, past = len(tokens), cache.get_seq_length()
        out = self.model(input_ids=torch.tensor([[t] for t in tokens], device=self.device),
                         attention_mask=torch.ones((n, past + 1), dtype=torch.long,
                                                   device=self.device),
                         position_ids=torch.full((n, 1), past, device=self.device),
                         cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float().log_softmax(-1)

    def prior_prompt_ids(self) -> list[int]:
        """prior_prompt's ids; its KV (all but the last token; None: run it every time) is
        made with them, once."""
        if self._prior_ids is None:
            self._prior_ids = self.encode([self.prior_prompt])[0]
            ids = torch.tensor([self._prior_ids], dtype=torch.long, device=self.device)
            with torch.no_grad():  # kept for the model's life: no autograd graph with it
                self._prior_kv = (self.prefill(ids, torch.ones_like(ids))
                                  if self.share_prefill and len(self._prior_ids) > 1 else None)
        return self._prior_ids

    def prior_prompt_cache(self) -> Any:
        """prior_prompt's KV but its last token (made once; None when the model's cache
        cannot be reused). Shared: copy it before extending it."""
        self.prior_prompt_ids()
        return self._prior_kv

    def _prior_next(self, prefixes: list[list[int]]) -> torch.Tensor:
        """log p(next token | prior_prompt + prefix) per prefix, [n, vocab] in fp32. Prefixes
        are left-padded after the prompt so every row ends at the last position."""
        prompt = self.prior_prompt_ids()
        n, width = len(prefixes), 1 + max(len(p) for p in prefixes)
        cont = torch.full((n, width), self.pad_id, dtype=torch.long, device=self.device)
        cmask = torch.zeros_like(cont)
        for i, p in enumerate(prefixes):
            seq = [prompt[-1], *p]
            cont[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            cmask[i, width - len(seq):] = 1
        head = torch.tensor([prompt[:-1]] * n, dtype=torch.long, device=self.device)
        cache = None
        if self._prior_kv is not None:
            cache = copy.deepcopy(self._prior_kv)
            cache.batch_repeat_interleave(n)
        out = self._forward_after(head, torch.ones_like(head), cont, cmask, cache, keep=1)
        return out.logits[:, -1].float().log_softmax(-1)

    def _forward_after(self, head: torch.Tensor, head_mask: torch.Tensor, cont: torch.Tensor,
                       cmask: torch.Tensor, cache: Any, keep: int) -> Any:
        """The model on `cont` after `head` (a prompt without its last token): from `cache`,
        the head's KV (consumed), or running the head again when it is None. Position ids
        come from the joint mask, so padding on either side is skipped."""
        full = torch.cat([head_mask, cmask], dim=1)
        pos = (full.cumsum(-1) - 1).clamp(min=0)
        if cache is not None:
            return self.model(input_ids=cont, attention_mask=full, position_ids=pos[:, -cont.shape[1]:],
                              cache=cache, use_cache=True, logits_to_keep=keep)
        return self.model(input_ids=torch.cat([head, cont], dim=1), attention_mask=full,
                          position_ids=pos, use_cache=False, logits_to_keep=keep)

    def prefill(self, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
        """KV cache of all but the last prompt token, one row per prompt (the caller repeats it
        for each beam; generate then runs only the last prompt token per beam). None when the
        model's cache cannot be repeated: generate then prefills the usual way."""
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        try:
            out = self.model(input_ids=input_ids[:, :-1], attention_mask=mask[:, :-1],
                             position_ids=pos[:, :-1], use_cache=True, logits_to_keep=1)
        except TypeError:  # a patched forward (e.g. Unsloth's) without these arguments
            return None
        cache = getattr(out, "cache", None)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            return None
        return cache


class _PriorGuidance(LogitsProcessor):
    """Grounded beams with generate.prior_weight = w: every token a beam may take scores
    log p(token | prompt) - w log p(token | prior prompt, the same item prefix), so a finished
    beam's score is sum_t [log p(y_t | history, y_<t) - w log p(y_t | no history, y_<t)] over
    its tokens (divided by their number, length_penalty 1.0, as plain beams).

    The prior depends only on the item prefix. One instance serves one search: it keeps the
    prior's KV cache for the prefixes the beams are at, one row per distinct prefix, and
    extends it by one token per step (HFGenerator.prior_extend), starting from the prompt's
    cached KV (HFGenerator.prior_root). A prefix whose parent was not kept (a model without a
    reusable cache) is run in full instead."""

    def __init__(self, gen: HFGenerator, width: int) -> None:
        self.gen, self.width = gen, width
        self.cache: Any = None
        self.rows: dict[tuple[int, ...], int] = {}
        """Prefix -> its row in `cache` (the prefixes of the last step)."""

    def _priors(self, prefixes: list[tuple[int, ...]]) -> torch.Tensor:
        """log p(next | prior prompt + prefix) per prefix [n, vocab]; keeps the new rows."""
        gen = self.gen
        if self.cache is None and not self.rows:
            root = gen.prior_root()
            if root is not None:
                self.cache, self.rows = copy.deepcopy(root[0]), {(): 0}
                if prefixes == [()]:
                    return root[1]
        known = [p for p in prefixes if p and p[:-1] in self.rows]
        out: dict[tuple[int, ...], torch.Tensor] = {}
        if known:
            logp = gen.prior_extend(self.cache, [self.rows[p[:-1]] for p in known],
                                    [p[-1] for p in known])
            out.update(zip(known, logp))
        self.rows = {p: i for i, p in enumerate(known)}
        rest = [p for p in prefixes if p not in out]
        for start in range(0, len(rest), _PRIOR_ROWS):
            part = rest[start:start + _PRIOR_ROWS]
            out.update(zip(part, gen._prior_next([list(p) for p in part])))
        return torch.stack([out[p] for p in prefixes])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        trie = self.gen.trie
        assert trie is not None
        beams: dict[tuple[int, ...], list[int]] = {}
        for r, prefix in enumerate(input_ids[:, self.width:].tolist()):
            node = trie.walk(prefix)
            # A dead beam (-inf) and a finished one (past its EOS: no branch) need no prior.
            if node is not None and trie.branches(node):
                beams.setdefault(tuple(prefix), []).append(r)
        if not beams:
            return scores
        prefixes = list(beams)
        prior = self._priors(prefixes).to(scores.dtype).clamp(min=-1e4)
        rows = torch.tensor([r for p in prefixes for r in beams[p]], device=scores.device)
        which = torch.tensor([i for i, p in enumerate(prefixes) for _ in beams[p]],
                             device=scores.device)
        # Over the whole vocabulary: a disallowed token stays -inf (the clamp keeps it from NaN).
        scores[rows] -= self.gen.cfg.prior_weight * prior[which]
        return scores


def _empty_prompt(template: str) -> str:
    """A test prompt with no history: what "pmi" conditions the item prior on."""
    return template.replace("{history}", "").replace("{target}", "")


def grounded_score(how: str, logprob: float, tokens: int, prior: float = 0.0,
                   prior_weight: float = 1.0) -> float:
    """A returned item's score: "length" = logprob / tokens, "pmi" = logprob - prior_weight x
    prior (prior: the item's log-prob after the empty-history prompt)."""
    if how == "length":
        return logprob / max(tokens, 1)
    if how == "pmi":
        return logprob - prior_weight * prior
    raise ValueError(f"unknown grounded_score {how!r}")


def rank_by(keys: list[int], scores: list[float]) -> list[int]:
    """`keys` by descending score; ties keep beam order."""
    return [keys[i] for i in sorted(range(len(keys)), key=lambda i: -scores[i])]
