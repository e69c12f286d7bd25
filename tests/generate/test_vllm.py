"""The vLLM backend cannot run here (no vllm, no GPU): its request building and output decoding
are tested against a fake vllm module injected into sys.modules."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from glossrec.config import GenerateConfig
from glossrec.errors import ConfigError
from glossrec.generate.vllm import VLLMGenerator, import_vllm


@dataclass
class FakeBeamSearchParams:
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""


@dataclass
class Seq:
    tokens: list[int]
    cum_logprob: float = 0.0


@dataclass
class Out:
    sequences: list[Seq] = field(default_factory=list)


class FakeLLM:
    instances: list[FakeLLM] = []
    tokenizer: Any = None
    continuations: list[str] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[tuple[Any, Any, Any]] = []
        FakeLLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return FakeLLM.tokenizer

    def beam_search(self, prompts: list[dict], params: Any, lora_request: Any = None) -> list[Out]:
        self.calls.append((prompts, params, lora_request))
        tok = FakeLLM.tokenizer
        outs = []
        for p in prompts:
            seqs = [Seq(p["prompt_token_ids"] + tok(c, add_special_tokens=False)["input_ids"]
                        + [tok.eos_token_id]) for c in FakeLLM.continuations]
            outs.append(Out(seqs[:params.beam_width]))
        return outs


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch, tiny_lm_dir: Path) -> type[FakeLLM]:
    from transformers import AutoTokenizer

    FakeLLM.instances = []
    FakeLLM.tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    FakeLLM.continuations = ["Title: red lipstick\nTitle: x", "\nTitle: comb", "Title: gel",
                             "", "Title: mask\n"]
    root = types.ModuleType("vllm")
    root.LLM = FakeLLM  # type: ignore[attr-defined]
    sp = types.ModuleType("vllm.sampling_params")
    sp.BeamSearchParams = FakeBeamSearchParams  # type: ignore[attr-defined]
    lora = types.ModuleType("vllm.lora")
    lreq = types.ModuleType("vllm.lora.request")
    lreq.LoRARequest = FakeLoRARequest  # type: ignore[attr-defined]
    for name, mod in [("vllm", root), ("vllm.sampling_params", sp), ("vllm.lora", lora),
                      ("vllm.lora.request", lreq)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return FakeLLM


def _adapter(tmp_path: Path, r: int = 16) -> Path:
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 16}))
    return d


def test_requests_use_paper_settings_and_the_adapter(fake_vllm: type[FakeLLM], tmp_path: Path) -> None:
    adapter = _adapter(tmp_path)
    gen = VLLMGenerator("/models/base", adapter, GenerateConfig(), max_prompt_tokens=974)
    llm = fake_vllm.instances[0]
    assert llm.kwargs["model"] == "/models/base"
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["max_lora_rank"] == 16
    assert llm.kwargs["max_model_len"] == 1024
    prompts = ["Title: a\n\n### Next item:\n", "Title: b b b\n\n### Next item:\n"]
    requests, params = gen.build_requests(prompts)
    tok = fake_vllm.tokenizer
    assert requests == [{"prompt_token_ids": tok(p)["input_ids"]} for p in prompts]
    assert (params.beam_width, params.max_tokens) == (5, 50)
    assert params.temperature == 0.0 and params.length_penalty == 1.0   # paper: no sampling
    out = gen.generate(prompts)
    _, _, lora = llm.calls[0]
    assert lora == FakeLoRARequest("glossrec", 1, str(adapter))
    # Only new tokens are decoded (the prompt is not in the texts), then post-processed.
    assert out == [["Title: red lipstick", "Title: comb", "Title: gel", "", "Title: mask"]] * 2


def test_no_adapter_no_lora_and_left_truncation(fake_vllm: type[FakeLLM]) -> None:
    gen = VLLMGenerator("base", None, GenerateConfig(num_return=3), max_prompt_tokens=8)
    llm = fake_vllm.instances[0]
    assert "enable_lora" not in llm.kwargs and llm.kwargs["max_model_len"] == 58
    prompt = "Title: shampoo conditioner lotion cream serum mask\n\n### Next item:\n"
    full = fake_vllm.tokenizer(prompt)["input_ids"]
    requests, _ = gen.build_requests([prompt])
    assert requests[0]["prompt_token_ids"] == full[-8:]
    out = gen.generate([prompt])
    assert llm.calls[0][2] is None
    assert out == [["Title: red lipstick", "Title: comb", "Title: gel"]]


def test_fewer_beams_than_asked_are_padded(fake_vllm: type[FakeLLM]) -> None:
    fake_vllm.continuations = ["Title: only one"]
    gen = VLLMGenerator("base", None, GenerateConfig())
    assert gen.generate(["p"]) == [["Title: only one", "", "", "", ""]]


def test_larger_lora_rank_is_passed(fake_vllm: type[FakeLLM], tmp_path: Path) -> None:
    VLLMGenerator("base", _adapter(tmp_path, r=64), GenerateConfig())
    assert fake_vllm.instances[0].kwargs["max_lora_rank"] == 64


def test_missing_vllm_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)   # import vllm -> ImportError
    with pytest.raises(ConfigError, match="needs the vllm package"):
        import_vllm()
    with pytest.raises(ConfigError, match="vllm"):
        VLLMGenerator("base", None, GenerateConfig())


def test_stop_at_newline_unsupported(fake_vllm: type[FakeLLM]) -> None:
    with pytest.raises(ConfigError, match="stop_at_newline"):
        VLLMGenerator("base", None, GenerateConfig(stop_at_newline=True))
