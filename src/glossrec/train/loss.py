"""Training texts as tokens, their labels, and the loss over the label positions.

Loss: causal-LM cross-entropy over the whole training text ("full", the paper) or only over the
target line + EOS ("target"). Labels come from the attention mask, never from the pad id: the pad
token of SmolLM2 IS its EOS, and the EOS that ends a training text must be learned. The loss of
one optimizer step is the mean over every label token of its accumulated micro-batches (not a
mean of micro-batch means), so padding and batch composition do not reweight examples.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from glossrec.errors import ConfigError
from glossrec.prompts import PromptPair
from glossrec.train.optim import _autocast

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """One training text as token ids; positions before `loss_start` are not labels."""

    input_ids: tuple[int, ...]
    loss_start: int = 0
    heads: tuple[int, ...] = ()
    """Positions where an item's text begins (history items and the target; only with
    ``encode_pairs(heads=True)``), for the loss weight of its first tokens."""


def encode_pairs(tokenizer: Any, pairs: Sequence[PromptPair], loss: str = "full",
                 max_length: int | None = None, heads: bool = False) -> list[Encoded]:
    """Token ids of prompt + target + EOS for each pair.

    Prompt and target are tokenized separately (prompt with the tokenizer's special tokens, e.g.
    a BOS), exactly as generation sees the prompt; the EOS id is appended, not parsed from text.
    Pairs longer than `max_length` (only when not built by PromptBuilder) lose tokens from the
    left. With `heads`, each text also records the token where each item begins: the target's
    and, from the pair's ``item_starts``, each history item's (the token holding its first
    character).
    """
    if not pairs:
        return []
    eos = tokenizer.eos_token_id
    try:
        enc = tokenizer([p.prompt for p in pairs], return_offsets_mapping=heads)
    except NotImplementedError as e:  # a Python ("slow") tokenizer has no character offsets
        raise ConfigError(f"train.head_weight: finding items' first tokens needs a fast "
                          f"tokenizer with character offsets ({e})") from None
    prompts = enc["input_ids"]
    spans = enc["offset_mapping"] if heads else [()] * len(pairs)
    targets = tokenizer([p.target for p in pairs], add_special_tokens=False)["input_ids"]
    out, cut = [], 0
    for pair, p_ids, t_ids, span in zip(pairs, prompts, targets, spans):
        ids = list(p_ids) + list(t_ids) + [eos]
        start = 0 if loss == "full" else len(p_ids)
        at = (*_tokens_at(span, pair.item_starts), len(p_ids)) if heads else ()
        if max_length is not None and len(ids) > max_length:
            drop = len(ids) - max_length
            ids, start, cut = ids[drop:], max(0, start - drop), cut + 1
            at = tuple(h - drop for h in at if h >= drop)
        out.append(Encoded(tuple(ids), start, at))
    if cut:
        log.warning("%d training texts exceeded %s tokens and were cut from the left",
                    cut, max_length)
    return out


def _tokens_at(spans: Sequence[tuple[int, int]], chars: Sequence[int]) -> tuple[int, ...]:
    """For each character offset, the first token whose span ends after it (special tokens,
    with empty spans, never)."""
    ends = list(itertools.accumulate((e if e > b else -1 for b, e in spans), max))
    return tuple(bisect.bisect_right(ends, c) for c in chars)


def make_labels(input_ids: Any, attention_mask: Any, loss_start: Any | None = None) -> Any:
    """Labels = input ids where the attention mask is 1 and the position >= loss_start.

    Masking by attention mask (not by pad id) keeps the final EOS as a label although
    pad == EOS.
    """
    import torch

    labels = input_ids.masked_fill(attention_mask == 0, IGNORE)
    if loss_start is not None:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        labels = labels.masked_fill(pos[None, :] < loss_start[:, None], IGNORE)
    return labels


def collate(batch: Sequence[Encoded], pad_id: int, head_tokens: int = 0,
            head_weight: float = 1.0) -> dict[str, Any]:
    """Right-pad a micro-batch to its longest text (dynamic padding, no packing).

    With `head_tokens` and a `head_weight` other than 1, the batch also carries ``weights``
    (aligned with ``labels[:, 1:]``): `head_weight` at the first `head_tokens` tokens of each
    item (:attr:`Encoded.heads`), 1 elsewhere.
    """
    import torch

    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        input_ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
        attention[i, :len(e.input_ids)] = 1
    starts = torch.tensor([e.loss_start for e in batch], dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": attention,
           "labels": make_labels(input_ids, attention, starts)}
    if head_tokens and head_weight != 1.0:
        weights = torch.ones((len(batch), width), dtype=torch.float32)
        for i, e in enumerate(batch):
            for h in e.heads:
                weights[i, h:h + head_tokens] = head_weight
        out["weights"] = weights[:, 1:]
    return out


def n_label_tokens(batch: dict[str, Any]) -> int:
    """Tokens that are predicted (the first position predicts nothing after the shift)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def label_weight(batch: dict[str, Any]) -> float:
    """The summed loss weight of the predicted tokens: :func:`n_label_tokens` unless the batch
    carries ``weights`` (:func:`collate`)."""
    if "weights" not in batch:
        return float(n_label_tokens(batch))
    return float(batch["weights"][batch["labels"][:, 1:] != IGNORE].sum())


# Architectures whose logits are exactly lm_head(last hidden state): no logit scaling or
# soft-capping between the two, so the head can be applied to label positions alone.
_PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3"})


def _body_and_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) of a (peft-wrapped) causal LM whose head can be applied apart, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in _PLAIN_HEAD_TYPES:
        return None
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if get_decoder is None or head is None:
        return None
    return get_decoder(), head


def _right_padded(mask: Any) -> bool:
    """Every row is ones then zeros (what `collate` builds)."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def token_losses(model: Any, batch: dict[str, Any], device: str, label_positions: bool = True,
                 causal_only: bool = True) -> Any:
    """Next-token cross-entropy (float32) at each position of ``labels[:, 1:]``, 0 where there
    is no label; :func:`loss_sum` is its sum.

    With `label_positions` (the default) the LM head runs only on the hidden states that predict
    a label: with target-only loss that is ~10% of the positions, and even with whole-text loss
    the padding is skipped. The 49k-wide fp32 logits of every position are the largest tensors
    of a SmolLM2 step. Models whose logits are not a plain head of the hidden state take the
    full-logit path.

    With `causal_only` a right-padded batch is run without its padding mask: a real token only
    attends to earlier positions, all real, so its hidden state is the same, and the padding's
    own outputs are never labels. Without a mask, SDPA runs its fused causal kernel instead of
    materializing a mask and every attention matrix, which saves most of a long micro-batch's
    peak memory (docs/results.md, "Training speed"). Both equal the reference loss
    (tests/test_train.py).
    """
    import torch.nn.functional as F

    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    targets = batch["labels"].to(device)[:, 1:]
    attention = None if causal_only and _right_padded(mask) else mask
    parts = _body_and_head(model) if label_positions else None
    if parts is None:
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE,
                               reduction="none")
    body, head = parts
    hidden = body(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
    keep = targets != IGNORE
    logits = head(hidden[:, :-1][keep]).float()
    out = hidden.new_zeros(targets.shape, dtype=logits.dtype)
    out[keep] = F.cross_entropy(logits, targets[keep], reduction="none")
    return out


def loss_sum(model: Any, batch: dict[str, Any], device: str, label_positions: bool = True,
             causal_only: bool = True) -> Any:
    """Summed next-token cross-entropy over the batch's label tokens (float32), each weighted by
    the batch's ``weights`` when it has them; see :func:`token_losses` for the two shortcuts,
    both exact."""
    ce = token_losses(model, batch, device, label_positions, causal_only)
    if "weights" in batch:
        ce = ce * batch["weights"].to(ce.device)
    return ce.sum()


def first_label_tokens(labels: Any, k: int) -> Any:
    """Mask over ``labels[:, 1:]``: each text's first `k` predicted label tokens (with a
    target-only text, the first k tokens of its target)."""
    import torch

    real = labels[:, 1:] != IGNORE
    first = real.int().argmax(dim=1, keepdim=True)
    index = torch.arange(real.shape[1], device=labels.device)[None, :] - first
    return real & (index < k)


@dataclass(frozen=True)
class ValidLosses:
    """One validation pass's summed next-token losses and their token counts: the token-mean
    loss over every label token, and the same over each text's first `first_k` label tokens and
    over the rest (``first_k`` 0: not split)."""

    texts: int
    loss_sum: float
    tokens: int
    first_k: int = 0
    first_sum: float = 0.0
    first_count: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.tokens, 1)

    @property
    def first(self) -> float | None:
        """Token-mean loss of the first `first_k` label tokens; None when not split."""
        return self.first_sum / max(self.first_count, 1) if self.first_k else None

    @property
    def rest(self) -> float | None:
        """Token-mean loss of the label tokens after the first `first_k`; None when not split."""
        if not self.first_k:
            return None
        return (self.loss_sum - self.first_sum) / max(self.tokens - self.first_count, 1)


def evaluate_loss(model: Any, data: Sequence[Encoded], pad_id: int, batch_size: int,
                  device: str, bf16: bool) -> float:
    """Token-mean validation loss (length-sorted batches: less padding, same result)."""
    return evaluate_losses(model, data, pad_id, batch_size, device, bf16).loss


def evaluate_losses(model: Any, data: Sequence[Encoded], pad_id: int, batch_size: int,
                    device: str, bf16: bool, first_tokens: int = 0) -> ValidLosses:
    """The validation losses of `data` in one pass: over every label token and, with
    `first_tokens`, split into each text's first `first_tokens` label tokens and the rest.

    On target-only texts the first part is the loss of the next item's first tokens (its brand
    and product line), where a catalog-grounded search chooses among items; the rest of a title
    is nearly fixed by the catalog once they are written (docs/results.md, "Whole-text
    continuation of the shipped model").
    """
    import torch

    order = sorted(range(len(data)), key=lambda i: len(data[i].input_ids))
    total, count, head, head_count = 0.0, 0, 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            batch = collate([data[i] for i in order[s:s + batch_size]], pad_id)
            with _autocast(device, bf16):
                ce = token_losses(model, batch, device)
            total += float(ce.sum())
            count += n_label_tokens(batch)
            if first_tokens:
                first = first_label_tokens(batch["labels"], first_tokens).to(ce.device)
                head += float(ce[first].sum())
                head_count += int(first.sum())
    if was_training:
        model.train()
    return ValidLosses(len(data), total, count, first_tokens, head, head_count)
