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
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from glossrec.config import GenerateConfig
from glossrec.errors import ConfigError
from glossrec.generate import encode_prompts, postprocess

__all__ = ["HFGenerator", "newline_token_ids"]


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
                 max_prompt_tokens: int = 1024 - 50, share_prefill: bool = True) -> None:
        self.cfg = cfg or GenerateConfig()
        if max_prompt_tokens < 1:
            raise ConfigError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError("the tokenizer has no EOS token: generation could not stop")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.share_prefill = share_prefill
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.device = _device(model)
        stop = [eos] + (newline_token_ids(tokenizer) if self.cfg.stop_at_newline else [])
        self.stop_ids = sorted(set(stop), key=stop.index)

    def generation_kwargs(self) -> dict[str, Any]:
        """The paper's settings, explicit so a model's own generation_config cannot change them."""
        c = self.cfg
        return dict(
            num_beams=c.num_beams, num_return_sequences=c.num_return, do_sample=False,
            max_new_tokens=c.max_new_tokens, length_penalty=1.0, early_stopping=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.stop_ids if len(self.stop_ids) > 1 else self.stop_ids[0],
            use_cache=True,
        )

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids per prompt, cut from the LEFT to max_prompt_tokens (special tokens kept)."""
        return encode_prompts(self.tokenizer, prompts, self.max_prompt_tokens)

    def generate(self, prompts: list[str]) -> list[list[str]]:
        if not prompts:
            return []
        encoded = self.encode(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        results: list[list[str]] = [[] for _ in prompts]
        size = self.cfg.batch_size
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            for i, texts in zip(idx, self.generate_ids([encoded[i] for i in idx])):
                results[i] = texts
        return results

    def generate_ids(self, batch: list[list[int]]) -> list[list[str]]:
        """One left-padded batch of token-id prompts -> num_return post-processed texts each."""
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = 1
        autocast = (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
                    if self.cfg.bf16 else nullcontext())
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        kwargs = self.generation_kwargs()
        with torch.inference_mode(), autocast:
            if self.share_prefill and width > 1:
                cache = self._prefill(input_ids, mask)
                if cache is not None:
                    kwargs["cache"] = cache
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        # Only the new tokens: the prompt is `width` tokens for every row (left padding).
        texts = self.tokenizer.batch_decode(out[:, width:].cpu(), skip_special_tokens=True)
        k = self.cfg.num_return
        return [[postprocess(t) for t in texts[r * k:(r + 1) * k]] for r in range(len(batch))]

    def _prefill(self, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
        """KV cache of all but the last prompt token, computed once per prompt and repeated for
        each beam (generate then runs only the last prompt token per beam). None when the model's
        cache cannot be repeated: generate then prefills the usual way."""
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        try:
            out = self.model(input_ids=input_ids[:, :-1], attention_mask=mask[:, :-1],
                             position_ids=pos[:, :-1], use_cache=True, logits_to_keep=1)
        except TypeError:  # a patched forward (e.g. Unsloth's) without these arguments
            return None
        cache = getattr(out, "cache", None)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            return None
        if self.cfg.num_beams > 1:
            cache.batch_repeat_interleave(self.cfg.num_beams)
        return cache
