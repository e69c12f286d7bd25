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
once per model) and only the rest is run, one prompt at a time so that nothing is padded.

The model must use transformers' attention interface (``ALL_ATTENTION_FUNCTIONS``) with full
attention in every layer (no sliding window, soft-capping or position bias): the decoding steps
switch its ``config._attn_implementation`` to :data:`ATTENTION` for their forward pass only.
:func:`supported` says whether a model qualifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache

__all__ = ["ATTENTION", "PromptKV", "SharedPrefixKV", "supported", "prefill_after_head"]

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


def prefill_after_head(model: Any, ids: Sequence[int], head_ids: Sequence[int],
                       head: Layers) -> tuple[Layers, int]:
    """KV of `ids` (one prompt, all of it) on one row, starting from `head`, the KV of
    `head_ids`: the longest common beginning of the two is taken from `head`, the rest is run.
    Positions are the tokens' own (0, 1, ...), as an unpadded prompt has. Also returns how many
    tokens came from `head`."""
    h = 0
    limit = min(len(ids), len(head_ids))
    while h < limit and ids[h] == head_ids[h]:
        h += 1
    dev = head[0][0].device if head else next(model.parameters()).device
    if h == len(ids):
        return [(k[:, :, :h], v[:, :, :h]) for k, v in head], h
    cache = (DynamicCache(ddp_cache_data=[(k[:, :, :h], v[:, :, :h]) for k, v in head])
             if h else DynamicCache())
    rest = torch.tensor([list(ids[h:])], dtype=torch.long, device=dev)
    out = model(input_ids=rest, position_ids=torch.arange(h, len(ids), device=dev)[None],
                cache=cache, use_cache=True, logits_to_keep=1)
    return cache_layers(out.cache), h


class PromptKV:
    """Prompts' KV per layer, right-padded into one tensor [prompts, kv heads, longest, head
    dim], with an additive mask [prompts, 1, 1, longest] (0, or -inf on padding). Prompts are
    named by their index in the list given; :meth:`keep` drops those no row needs."""

    def __init__(self, prompts: Sequence[Layers]) -> None:
        self.ids = list(range(len(prompts)))
        """The prompt held at each position (an index into the list given)."""
        self.lengths = [p[0][0].shape[2] for p in prompts]
        width = max(self.lengths)
        self.layers: Layers = []
        for layer in range(len(prompts[0])):
            k0 = prompts[0][layer][0]
            keys = k0.new_zeros((len(prompts), k0.shape[1], width, k0.shape[3]))
            values = torch.zeros_like(keys)
            for i, p in enumerate(prompts):
                keys[i, :, :self.lengths[i]] = p[layer][0][0]
                values[i, :, :self.lengths[i]] = p[layer][1][0]
            self.layers.append((keys, values))
        bias = torch.zeros((len(prompts), 1, 1, width), device=self.layers[0][0].device)
        for i, n in enumerate(self.lengths):
            bias[i, ..., n:] = float("-inf")
        self.bias = bias.to(self.layers[0][0].dtype)

    def keep(self, ids: Sequence[int]) -> None:
        """Keep only prompts `ids` (in this order)."""
        pos = {p: i for i, p in enumerate(self.ids)}
        which = [pos[p] for p in ids]
        if which == list(range(len(self.ids))):
            return
        idx = torch.tensor(which, dtype=torch.long, device=self.bias.device)
        self.layers = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self.layers]
        self.bias = self.bias.index_select(0, idx)
        self.lengths = [self.lengths[i] for i in which]
        self.ids = list(ids)

    def left_padded(self, width: int) -> Any:
        """A transformers DynamicCache of these prompts left-padded to `width` tokens (zeros
        where padded, to be masked), one row per prompt: what a padded prefill gives."""
        data = []
        for keys, values in self.layers:
            k = keys.new_zeros((keys.shape[0], keys.shape[1], width, keys.shape[3]))
            v = torch.zeros_like(k)
            for i, n in enumerate(self.lengths):
                k[i, :, width - n:] = keys[i, :, :n]
                v[i, :, width - n:] = values[i, :, :n]
            data.append((k, v))
        return DynamicCache(ddp_cache_data=data)


class _Group:
    """Where one step's rows of one PromptKV go: queries gathered into [prompts, slots] (a
    prompt's rows side by side, the last one repeated into unused slots) and back."""

    def __init__(self, rows: list[int], src: list[int], where: list[int], slots: int,
                 every_row: bool, dev: torch.device) -> None:
        def tensor(x: list[int]) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.long, device=dev)

        self.src, self.where, self.slots = tensor(src), tensor(where), slots
        self.rows = None if every_row else tensor(rows)
        """The rows of this group, None when it is every row in order."""


class SharedPrefixKV:
    """The KV of one search's rows: prompts once (:class:`PromptKV` groups), each row's own
    tokens apart. The model gets it as its cache (it offers ``update``), the attention as the
    keyword ``shared_prefix``."""

    def __init__(self, groups: Sequence[PromptKV]) -> None:
        self.groups = list(groups)
        self.length = 0
        """Tokens each row holds of its own."""
        self._own: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(
            groups[0].layers)
        self._parents: torch.Tensor | None = None
        self._layout: list[_Group | None] = []
        self.keys_read = 0
        """Keys attended by all rows of all steps (per layer and head), for FLOP counts."""

    def step(self, model: Any, tokens: Sequence[int], rows: Sequence[tuple[int, int]],
             parents: Sequence[int] | None, positions: Sequence[int]) -> torch.Tensor:
        """Logits [len(tokens), vocab] of one token per row. `rows[i]`: (group, prompt id) of
        row i; `parents[i]`: the row of the last step whose own tokens row i continues (None at
        the first step); `positions[i]`: the token's position."""
        dev = self.groups[0].bias.device
        self._parents = (None if parents is None else
                         torch.tensor(list(parents), dtype=torch.long, device=dev))
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
        self.length += 1
        for g, p in rows:
            group = self.groups[g]
            self.keys_read += group.lengths[group.ids.index(p)] + self.length
        return out.logits[:, -1]

    def _group_layout(self, g: int, rows: Sequence[tuple[int, int]], dev: torch.device
                      ) -> _Group | None:
        """Group g's part of this step (its prompts without a row are dropped for good)."""
        mine = [(r, p) for r, (gg, p) in enumerate(rows) if gg == g]
        if not mine:
            return None
        per: dict[int, list[int]] = {}
        for r, p in mine:
            per.setdefault(p, []).append(r)
        group = self.groups[g]
        group.keep([p for p in group.ids if p in per])
        slots = max(len(rs) for rs in per.values())
        src = [per[p][min(s, len(per[p]) - 1)] for p in group.ids for s in range(slots)]
        slot = {r: i * slots + s for i, p in enumerate(group.ids) for s, r in enumerate(per[p])}
        return _Group([r for r, _ in mine], src, [slot[r] for r, _ in mine], slots,
                      len(mine) == len(rows), dev)

    # ---- the cache protocol the model calls ------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's token to every row's own KV (rows reordered by their parents
        first) and return the rows' own keys and values [rows, kv heads, length + 1, dim]."""
        n, s = key_states.shape[0], self.length
        shape = (n, key_states.shape[1], s + 1, key_states.shape[3])
        keys, values = key_states.new_empty(shape), value_states.new_empty(shape)
        old = self._own[layer_idx]
        if s:
            assert old is not None and self._parents is not None
            torch.index_select(old[0], 0, self._parents, out=keys[:, :, :s])
            torch.index_select(old[1], 0, self._parents, out=values[:, :, :s])
        keys[:, :, s] = key_states[:, :, 0]
        values[:, :, s] = value_states[:, :, 0]
        self._own[layer_idx] = (keys, values)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    # ---- attention --------------------------------------------------------------------------------

    def attend(self, layer: int, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               scale: float) -> torch.Tensor:
        """Attention of one query token per row [rows, heads, 1, dim] over its prompt and its
        own tokens (`keys`, `values`), as [rows, 1, heads, dim]."""
        n, heads, _, dim = query.shape
        kv_heads = keys.shape[1]
        rep = heads // kv_heads
        q = query.reshape(n, kv_heads, rep, dim)
        own_out, own_lse = _attention(q, keys, values, None, scale)
        out, lse = torch.empty_like(own_out), torch.empty_like(own_lse)
        for group, at in zip(self.groups, self._layout):
            if at is None:
                continue
            pk, pv = group.layers[layer]
            m, slots = pk.shape[0], at.slots
            gq = q.index_select(0, at.src).view(m, slots, kv_heads, rep, dim)
            gq = gq.transpose(1, 2).reshape(m, kv_heads, slots * rep, dim)
            o, l = _attention(gq, pk, pv, group.bias, scale)
            o = o.view(m, kv_heads, slots, rep, dim).transpose(1, 2).reshape(
                m * slots, kv_heads, rep, dim).index_select(0, at.where)
            l = l.view(m, kv_heads, slots, rep).transpose(1, 2).reshape(
                m * slots, kv_heads, rep).index_select(0, at.where)
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
