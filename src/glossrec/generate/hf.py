"""Transformers beam search, batched by prompt length, with the GLoSS paper's settings.

Paper (reference code): 5 beams, 5 returned sequences, no sampling, at most 50 new tokens, left
padding, prompts cut from the left to (1024 - 50) tokens. Prompts are grouped by token length so
a batch pads little, and results come back in input order. In fp32 a batch gives the same texts
as one prompt at a time: left padding is masked and position ids come from the attention mask
(transformers' generate does both), which tests/generate checks.
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
                 max_prompt_tokens: int = 1024 - 50) -> None:
        self.cfg = cfg or GenerateConfig()
        if max_prompt_tokens < 1:
            raise ConfigError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError("the tokenizer has no EOS token: generation could not stop")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
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
        with torch.inference_mode(), autocast:
            out = self.model.generate(input_ids=input_ids.to(self.device),
                                      attention_mask=mask.to(self.device),
                                      **self.generation_kwargs())
        # Only the new tokens: the prompt is `width` tokens for every row (left padding).
        texts = self.tokenizer.batch_decode(out[:, width:].cpu(), skip_special_tokens=True)
        k = self.cfg.num_return
        return [[postprocess(t) for t in texts[r * k:(r + 1) * k]] for r in range(len(batch))]
