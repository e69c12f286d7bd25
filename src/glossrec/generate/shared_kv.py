"""Decoding rows that share prompts: each prompt's KV once, attention in two parts.

Beam search runs num_beams rows per prompt, and PMI-guided search one more row per distinct
item prefix on the empty-history prompt. With a transformers cache every row holds its own copy
of its prompt's KV, copied again whenever the beams are reordered and grown by concatenation at
every step. Here the KV lives in two parts:

- the prompts' KV, one copy per prompt: the batch's user prompts padded into one tensor per
  layer (a row never moves once prefilled), and the empty-history prompt's, made once per model;
- each row's new tokens (from the prompt's last token on), a few dozen at most, reordered with
  the beams.

A row attends to both parts separately, and the two softmax-weighted sums are merged with their
log-sum-exps (exact in real arithmetic, as "cascade" or "hydragen" attention do): the prompt
part runs as one attention per prompt over all of its rows' queries.

Prefill shares work too: every test prompt begins with the template's text before the history,
the beginning of the empty-history prompt. A prompt's KV starts from that prompt's KV (computed
once per model) and only the rest is run, a few prompts per pass, right-padded (a causal
model's real tokens never attend to the padding after them).

The model must use transformers' attention interface (``ALL_ATTENTION_FUNCTIONS``) with full
attention in every layer (no sliding window, soft-capping or position bias): the decoding steps
switch its ``config._attn_implementation`` to :data:`ATTENTION` for their forward pass only.
:func:`supported` says whether a model qualifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from transformers import AttentionInterface, DynamicCache

__all__ = ["ATTENTION", "Layers", "Prefilled", "PromptKV", "SharedPrefixKV", "supported",
           "prefill_after_head"]

ATTENTION = "glossrec_shared_prefix"
"""The attention implementation the decoding steps run under (registered on import)."""

Layers = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer (keys, values), each [batch, kv heads, tokens, head dim]."""


def supported(model: Any) -> bool:
    """Whether `model`'s attention can run as :data:`ATTENTION`: it dispatches through
    transformers' attention interface and every layer attends to the whole sequence."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "_supports_attention_backend", False):
        return False
    config = base.config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None)
    if types is not None and any(t != "full_attention" for t in types):
        return False
    if getattr(config, "sliding_window", None) is not None and \
            getattr(config, "use_sliding_window", True):
        return False
    return all(getattr(config, name, None) is None
               for name in ("attn_logit_softcapping", "final_logit_softcapping"))


def cache_layers(cache: Any) -> Layers:
    """A transformers DynamicCache's (keys, values) per layer."""
    return [(layer.keys, layer.values) for layer in cache.layers]


class Prefilled(NamedTuple):
    """One prompt's prefill: its KV, how many of its tokens came from the head, and how many
    token positions its forward pass ran for it (its rest, padded to its pass's longest; 0 when
    the head held all of it)."""

    layers: Layers
    shared: int
    run: int


def prefill_after_head(model: Any, prompts: Sequence[Sequence[int]], head_ids: Sequence[int],
                       head: Layers) -> list[Prefilled]:
    """Per prompt, its KV (all of it, one row) starting from `head`, the KV of `head_ids`: the
    longest common beginning of the two comes from `head`, the rest is run. Prompts that share
    as much of the head run in one forward pass, right-padded to the longest: a causal model's
    real tokens never see the padding after them, and one pass of many rows keeps the matmuls
    large. Positions are the tokens' own (0, 1, ...), as an unpadded prompt has."""
    out: list[Prefilled] = [Prefilled([], 0, 0)] * len(prompts)
    by_shared: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):
        h, limit = 0, min(len(ids), len(head_ids))
        while h < limit and ids[h] == head_ids[h]:
            h += 1
        by_shared.setdefault(h, []).append(i)
    dev = head[0][0].device if head else next(model.parameters()).device
    for h, idx in by_shared.items():
        run = [i for i in idx if len(prompts[i]) > h]
        for i in idx:
            if len(prompts[i]) == h:
                out[i] = Prefilled([(k[:, :, :h], v[:, :, :h]) for k, v in head], h, 0)
        if not run:
            continue
        width = max(len(prompts[i]) - h for i in run)
        rest = torch.zeros((len(run), width), dtype=torch.long, device=dev)
        mask = torch.zeros((len(run), h + width), dtype=torch.long, device=dev)
        for row, i in enumerate(run):
            rest[row, :len(prompts[i]) - h] = torch.tensor(list(prompts[i][h:]), dtype=torch.long)
            mask[row, :len(prompts[i])] = 1
        cache = (DynamicCache(ddp_cache_data=[(k[:, :, :h].expand(len(run), -1, -1, -1),
                                               v[:, :, :h].expand(len(run), -1, -1, -1))
                                              for k, v in head]) if h else DynamicCache())
        ragged = any(len(prompts[i]) - h < width for i in run)
        result = model(input_ids=rest, attention_mask=mask if ragged else None,
                       position_ids=torch.arange(h, h + width, device=dev)[None].expand(
                           len(run), -1), cache=cache, use_cache=True, logits_to_keep=1)
        layers = cache_layers(result.cache)
        for row, i in enumerate(run):
            n = len(prompts[i])
            out[i] = Prefilled([(k[row:row + 1, :, :n], v[row:row + 1, :, :n]) for k, v in layers],
                               h, width)
    return out


class PromptKV:
    """Prompts' KV per layer in slots of one tensor [slots, kv heads, longest, head dim], with
    an additive mask [slots, 1, 1, longest] (0, or -inf past a prompt's end). Prompts come and
    go by id (:meth:`add`, :meth:`remove`); a free slot is reused, and the tensors grow when a
    prompt needs more slots or more width."""

    def __init__(self, prompts: Sequence[Layers] = ()) -> None:
        self.layers: Layers = []
        self.bias: torch.Tensor | None = None
        self.slot: dict[int, int] = {}
        """Prompt id -> its slot."""
        self.lengths: dict[int, int] = {}
        self._free: list[int] = []
        for i, p in enumerate(prompts):
            self.add(i, p)

    @property
    def slots(self) -> int:
        return 0 if self.bias is None else self.bias.shape[0]

    def add(self, pid: int, prompt: Layers) -> None:
        """Hold prompt `pid`'s KV (per layer, [1, kv heads, tokens, head dim])."""
        n = prompt[0][0].shape[2]
        if self.bias is None:
            k0 = prompt[0][0]
            self.layers = [(k0.new_zeros((1, *k0.shape[1:])), k0.new_zeros((1, *k0.shape[1:])))
                           for _ in prompt]
            self.bias = torch.zeros((1, 1, 1, n), dtype=k0.dtype, device=k0.device)
            self._free = [0]
        if not self._free:
            self._grow(slots=2 * self.slots)
        if n > self.bias.shape[3]:
            self._grow(width=n)
        slot = self._free.pop(0)
        for (keys, values), (k, v) in zip(self.layers, prompt):
            keys[slot, :, :n] = k[0]
            values[slot, :, :n] = v[0]
        self.bias[slot] = 0.0
        self.bias[slot, ..., n:] = float("-inf")
        self.slot[pid], self.lengths[pid] = slot, n

    def remove(self, pid: int) -> None:
        """Free prompt `pid`'s slot (its stale KV stays, finite, never read by a row)."""
        assert self.bias is not None
        slot = self.slot.pop(pid)
        del self.lengths[pid]
        self.bias[slot] = 0.0
        self._free.append(slot)
        self._free.sort()

    def _grow(self, slots: int = 0, width: int = 0) -> None:
        assert self.bias is not None
        old = self.slots
        slots, width = max(slots, old), max(width, self.bias.shape[3])
        grown = []
        for keys, values in self.layers:
            k = keys.new_zeros((slots, keys.shape[1], width, keys.shape[3]))
            v = torch.zeros_like(k)
            k[:old, :, :keys.shape[2]] = keys
            v[:old, :, :keys.shape[2]] = values
            grown.append((k, v))
        bias = self.bias.new_zeros((slots, 1, 1, width))
        bias[:old, ..., :self.bias.shape[3]] = self.bias
        for pid, slot in self.slot.items():
            bias[slot, ..., self.lengths[pid]:] = float("-inf")
        self.layers, self.bias = grown, bias
        self._free += list(range(old, slots))

    def left_padded(self, ids: Sequence[int], width: int) -> Any:
        """A transformers DynamicCache of prompts `ids` left-padded to `width` tokens (zeros
        where padded, to be masked), one row per prompt: what a padded prefill gives."""
        data = []
        for keys, values in self.layers:
            k = keys.new_zeros((len(ids), keys.shape[1], width, keys.shape[3]))
            v = torch.zeros_like(k)
            for i, pid in enumerate(ids):
                n, slot = self.lengths[pid], self.slot[pid]
                k[i, :, width - n:] = keys[slot, :, :n]
                v[i, :, width - n:] = values[slot, :, :n]
            data.append((k, v))
        return DynamicCache(ddp_cache_data=data)


class _Group:
    """Where one step's rows of one PromptKV go: queries gathered into [slots, per slot] (a
    prompt's rows side by side; unused places repeat a row) and back."""

    def __init__(self, src: list[int], where: list[int], rows: list[int] | None, per: int,
                 dev: torch.device) -> None:
        def tensor(x: list[int]) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.long, device=dev)

        self.src, self.where, self.per = tensor(src), tensor(where), per
        self.rows = None if rows is None else tensor(rows)
        """The rows of this group, None when it is every row in order."""


class SharedPrefixKV:
    """The KV of a search's rows: prompts once (:class:`PromptKV` groups), each row's own
    tokens apart. The model gets it as its cache (it offers ``update``), the attention as the
    keyword ``shared_prefix``. A row continues a row of the last step (its parent) or starts
    with no tokens of its own, so rows of prompts that joined at different steps mix."""

    def __init__(self, groups: Sequence[PromptKV]) -> None:
        self.groups = list(groups)
        self._own: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        """Layer -> the rows' own keys and values."""
        self._own_len = torch.zeros(0, dtype=torch.long)
        """Own tokens per row of the last step (after it)."""
        self._parents: torch.Tensor | None = None
        self._lengths: torch.Tensor | None = None
        """Per row of this step: its parent (0 for a new row) and its own tokens before it."""
        self._width = 1
        self._own_bias: torch.Tensor | None = None
        self._layout: list[_Group | None] = []
        self.keys_read = 0
        """Keys attended by all rows of all steps (per layer and head), for FLOP counts."""

    def step(self, model: Any, tokens: Sequence[int], rows: Sequence[tuple[int, int]],
             parents: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """Logits [len(tokens), vocab] of one token per row. `rows[i]`: (group, prompt id) of
        row i; `parents[i]`: the row of the last step whose own tokens row i continues, or -1
        for a row with none yet; `positions[i]`: the token's position."""
        dev = next(g.layers[0][0].device for g in self.groups if g.layers)
        par = torch.tensor(list(parents), dtype=torch.long, device=dev)
        fresh = par < 0
        par = par.clamp(min=0)
        lengths = torch.where(fresh, 0, self._own_len.to(dev)[par] if self._own_len.numel()
                              else torch.zeros_like(par))
        self._parents, self._lengths = par, lengths
        self._width = width = int(lengths.max()) + 1
        self._own_bias = None
        if int(lengths.min()) + 1 < width:  # rows of different lengths: mask each one's end
            pos = torch.arange(width, device=dev)
            self._own_bias = torch.zeros((len(rows), 1, 1, width), device=dev).masked_fill(
                (pos[None, :] > lengths[:, None])[:, None, None, :], float("-inf"))
        self._layout = [self._group_layout(g, rows, dev) for g in range(len(self.groups))]
        config = model.config
        old = config._attn_implementation
        config._attn_implementation = ATTENTION
        try:
            out = model(input_ids=torch.tensor([[t] for t in tokens], device=dev),
                        position_ids=torch.tensor([[p] for p in positions], device=dev),
                        cache=self, use_cache=True, logits_to_keep=1, shared_prefix=self)
        finally:
            config._attn_implementation = old
        self._own_len = lengths + 1
        self.keys_read += int(self._own_len.sum()) + sum(self.groups[g].lengths[p]
                                                         for g, p in rows)
        return out.logits[:, -1]

    def _group_layout(self, g: int, rows: Sequence[tuple[int, int]], dev: torch.device
                      ) -> _Group | None:
        """Group g's part of this step."""
        mine = [(r, p) for r, (gg, p) in enumerate(rows) if gg == g]
        if not mine:
            return None
        group = self.groups[g]
        by_slot: dict[int, list[int]] = {}
        for r, p in mine:
            by_slot.setdefault(group.slot[p], []).append(r)
        per = max(len(rs) for rs in by_slot.values())
        src = [by_slot[s][min(i, len(by_slot[s]) - 1)] if s in by_slot else 0
               for s in range(group.slots) for i in range(per)]
        place = {r: s * per + i for s, rs in by_slot.items() for i, r in enumerate(rs)}
        every = len(mine) == len(rows)
        return _Group(src, [place[r] for r, _ in mine], None if every else [r for r, _ in mine],
                      per, dev)

    # ---- the cache protocol the model calls ------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's token to every row's own KV (rows take their parents' first)
        and return the rows' own keys and values [rows, kv heads, longest + 1, dim] (a
        shorter row's end is masked in the attention)."""
        assert self._parents is not None and self._lengths is not None
        n, width = key_states.shape[0], self._width
        shape = (n, key_states.shape[1], width, key_states.shape[3])
        # A shorter row's masked end must hold finite numbers (0 x -inf would be NaN).
        make = key_states.new_empty if self._own_bias is None else key_states.new_zeros
        keys, values = make(shape), make(shape)
        old = self._own.get(layer_idx)
        if width > 1:
            assert old is not None
            torch.index_select(old[0][:, :, :width - 1], 0, self._parents,
                               out=keys[:, :, :width - 1])
            torch.index_select(old[1][:, :, :width - 1], 0, self._parents,
                               out=values[:, :, :width - 1])
        if self._own_bias is None:  # every row equally long: the new token goes last
            keys[:, :, width - 1] = key_states[:, :, 0]
            values[:, :, width - 1] = value_states[:, :, 0]
        else:
            at = torch.arange(n, device=keys.device)
            keys[at, :, self._lengths] = key_states[:, :, 0]
            values[at, :, self._lengths] = value_states[:, :, 0]
        self._own[layer_idx] = (keys, values)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self._lengths is None else int(self._lengths.max()) + 1

    # ---- attention --------------------------------------------------------------------------------

    def attend(self, layer: int, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               scale: float) -> torch.Tensor:
        """Attention of one query token per row [rows, heads, 1, dim] over its prompt and its
        own tokens (`keys`, `values`), as [rows, 1, heads, dim]."""
        n, heads, _, dim = query.shape
        kv_heads = keys.shape[1]
        rep = heads // kv_heads
        q = query.reshape(n, kv_heads, rep, dim)
        own_out, own_lse = _attention(q, keys, values, self._own_bias, scale)
        out, lse = torch.empty_like(own_out), torch.empty_like(own_lse)
        for group, at in zip(self.groups, self._layout):
            if at is None:
                continue
            pk, pv = group.layers[layer]
            m, per = pk.shape[0], at.per
            gq = q.index_select(0, at.src).view(m, per, kv_heads, rep, dim)
            gq = gq.transpose(1, 2).reshape(m, kv_heads, per * rep, dim)
            o, l = _attention(gq, pk, pv, group.bias, scale)
            o = o.view(m, kv_heads, per, rep, dim).transpose(1, 2).reshape(
                m * per, kv_heads, rep, dim).index_select(0, at.where)
            l = l.view(m, kv_heads, per, rep).transpose(1, 2).reshape(
                m * per, kv_heads, rep).index_select(0, at.where)
            if at.rows is None:
                out, lse = o, l
            else:
                out[at.rows], lse[at.rows] = o, l
        # The softmax over both parts weighs each part's output by exp(its lse - both's lse).
        top = torch.maximum(lse, own_lse)
        a, b = torch.exp(lse - top)[..., None], torch.exp(own_lse - top)[..., None]
        merged = (out.float() * a + own_out.float() * b) / (a + b)
        return merged.to(query.dtype).reshape(n, 1, heads, dim)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
               scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + bias) v and the log-sum-exp of each query's scores (fp32);
    q [b, h, queries, dim], k and v [b, h, keys, dim] (in q's dtype: under autocast they may
    not be)."""
    k, v = k.to(q.dtype), v.to(q.dtype)
    bias = bias.to(q.dtype) if bias is not None else None
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=bias, scale=scale)
        return out, lse.float()
    scores = (q @ k.transpose(-1, -2)).float() * scale
    if bias is not None:
        scores = scores + bias
    lse = scores.logsumexp(-1)
    return (torch.exp(scores - lse[..., None]).to(v.dtype) @ v), lse


def _shared_prefix_attention(module: Any, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: Any, scaling: float | None = None,
                             dropout: float = 0.0, shared_prefix: SharedPrefixKV | None = None,
                             **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The attention function of :data:`ATTENTION`: `key`/`value` are the rows' own tokens
    (from :meth:`SharedPrefixKV.update`), the prompts come from `shared_prefix`."""
    if shared_prefix is None or query.shape[2] != 1:
        raise RuntimeError(f"{ATTENTION} attention runs only in SharedPrefixKV.step")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return shared_prefix.attend(module.layer_idx, query, key, value, scale), None


AttentionInterface.register(ATTENTION, _shared_prefix_attention)
