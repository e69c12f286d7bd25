"""vLLM beam search (GPU): the paper's generation settings at serving-engine speed.

Written against vLLM's offline API, stable from 0.6.3 through 0.22:
``LLM(model, enable_lora=True, ...)`` and
``LLM.beam_search(prompts, BeamSearchParams(beam_width, max_tokens), lora_request=LoRARequest(...))``
returning one ``BeamSearchOutput`` per prompt whose ``.sequences`` (best first) carry ``.tokens``
(prompt + new tokens). Prompts are passed as token ids (``{"prompt_token_ids": [...]}``) so the
left truncation is ours and identical to the HF backend's, and only the new tokens are decoded:
``BeamSearchSequence.text`` includes the prompt.

vllm is imported lazily (it is a large CUDA-only dependency, not installed for CPU work); the
pure parts (request building, output decoding) are unit-tested with a fake vllm module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glossrec.config import GenerateConfig
from glossrec.errors import ConfigError
from glossrec.generate.base import encode_prompts, postprocess

__all__ = ["VLLMGenerator", "VLLMApi", "import_vllm", "decode_output"]


@dataclass(frozen=True)
class VLLMApi:
    """The three vLLM names this backend uses."""

    LLM: Any
    BeamSearchParams: Any
    LoRARequest: Any


def import_vllm() -> VLLMApi:
    try:
        from vllm import LLM
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import BeamSearchParams
    except ImportError as e:
        raise ConfigError(
            'generate.backend = "vllm" needs the vllm package (pip install "glossrec[vllm]", '
            f'CUDA GPU); use backend = "hf" otherwise ({e})') from None
    return VLLMApi(LLM, BeamSearchParams, LoRARequest)


def _lora_rank(adapter_dir: Path) -> int:
    from glossrec.weights import lora_settings

    try:
        return int(lora_settings(adapter_dir).get("r", 16))
    except (TypeError, ValueError):
        raise ConfigError(f"{adapter_dir}: not a valid adapter config (r)") from None


def decode_output(output: Any, prompt_ids: list[int], tokenizer: Any, k: int) -> list[str]:
    """The best `k` beams of one BeamSearchOutput as post-processed texts of their new tokens.

    Fewer than `k` beams (vLLM drops beams cut by max-model-len) are padded with "" so every
    user has `k` texts, as with the HF backend.
    """
    texts = []
    n = len(prompt_ids)
    for seq in list(output.sequences)[:k]:
        tokens = list(seq.tokens)
        new = tokens[n:] if tokens[:n] == prompt_ids else tokens
        texts.append(postprocess(tokenizer.decode(new, skip_special_tokens=True)))
    return texts + [""] * (k - len(texts))


class VLLMGenerator:
    """Beam search with vLLM; `batch_size` is ignored (vLLM schedules all prompts itself), so
    give :func:`~glossrec.generate.generate_to_file` a large batch (e.g. 512)."""

    def __init__(self, base_model: str, adapter_dir: Path | None, cfg: GenerateConfig | None = None,
                 max_prompt_tokens: int = 1024 - 50, api: VLLMApi | None = None,
                 **llm_kwargs: Any) -> None:
        self.cfg = cfg or GenerateConfig()
        if self.cfg.constrain != "none":
            raise ConfigError(f'generate.constrain = "{self.cfg.constrain}" is not supported by '
                              'the vllm backend (its beam search takes no token constraint); '
                              'use backend = "hf" or constrain = "none"')
        if self.cfg.stop_at_newline:
            raise ConfigError("generate.stop_at_newline is not supported by the vllm backend "
                              "(vLLM beam search stops on EOS only); set it to false")
        self.api = api or import_vllm()
        self.max_prompt_tokens = max_prompt_tokens
        self.adapter_dir = Path(adapter_dir) if adapter_dir is not None else None
        kwargs: dict[str, Any] = dict(
            model=str(base_model), max_model_len=max_prompt_tokens + self.cfg.max_new_tokens,
            seed=0)
        if self.adapter_dir is not None:
            kwargs["enable_lora"] = True
            kwargs["max_lora_rank"] = max(16, _lora_rank(self.adapter_dir))
        if self.cfg.bf16:
            kwargs["dtype"] = "bfloat16"
        kwargs.update(llm_kwargs)
        self.llm_kwargs = kwargs
        self.llm = self.api.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.lora_request = (self.api.LoRARequest("glossrec", 1, str(self.adapter_dir))
                             if self.adapter_dir is not None else None)

    def build_requests(self, prompts: list[str]) -> tuple[list[dict[str, list[int]]], Any]:
        """(token prompts, BeamSearchParams) with the paper's settings."""
        ids = encode_prompts(self.tokenizer, prompts, self.max_prompt_tokens)
        params = self.api.BeamSearchParams(beam_width=self.cfg.num_beams,
                                           max_tokens=self.cfg.max_new_tokens)
        return [{"prompt_token_ids": p} for p in ids], params

    def generate(self, prompts: list[str],
                 exclude: Sequence[Sequence[int]] | None = None) -> list[list[str]]:
        if exclude is not None:
            raise ValueError("the vllm backend does not ground generation: exclude must be None")
        if not prompts:
            return []
        requests, params = self.build_requests(prompts)
        outputs = self.llm.beam_search(requests, params, lora_request=self.lora_request)
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} prompts")
        k = self.cfg.num_return
        return [decode_output(out, req["prompt_token_ids"], self.tokenizer, k)
                for out, req in zip(outputs, requests)]
