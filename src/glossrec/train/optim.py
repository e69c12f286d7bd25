"""The optimizer, the learning-rate schedule, precision (bf16 autocast) and activation
checkpointing, each from ``TrainConfig``.

The paper's recipe: AdamW (8-bit paged on CUDA, 8-bit for 4-bit QLoRA on a CPU whose
bitsandbytes has a CPU backend, torch AdamW otherwise) at lr 1e-4, linear schedule with 300
warm-up steps, weight decay 0.01.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glossrec.config import TrainConfig
from glossrec.errors import ConfigError

log = logging.getLogger(__name__)

def _optimizer(params: list[Any], t: TrainConfig, device: str, four_bit: bool = False) -> Any:
    """train.optim; None: the paper's paged 8-bit AdamW on CUDA and for 4-bit QLoRA anywhere,
    torch AdamW otherwise. An 8-bit AdamW that bitsandbytes cannot run on this device falls back
    to torch AdamW with the reason logged; paging (CUDA unified memory) is CUDA-only."""
    import torch

    from glossrec.models import bitsandbytes_missing

    on_cuda = device.startswith("cuda")
    name = t.optim or ("paged_adamw_8bit" if on_cuda or four_bit else "adamw_torch")
    if name != "adamw_torch":
        missing = bitsandbytes_missing("adamw_8bit", device)
        if missing is not None:
            log.warning("train.optim %s: %s; training with torch AdamW instead", name, missing)
            name = "adamw_torch"
        elif name == "paged_adamw_8bit" and not on_cuda:
            log.info("train.optim paged_adamw_8bit: paging needs CUDA; 8-bit AdamW without it")
            name = "adamw_8bit"
    log.info("optimizer: %s", name)
    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    import bitsandbytes as bnb  # type: ignore[import-not-found]

    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=t.learning_rate, weight_decay=t.weight_decay)


def _schedule(optimizer: Any, warmup: int, total: int, kind: str = "linear") -> Any:
    """transformers' get_linear_schedule_with_warmup: 0 -> lr over warmup, then -> 0 at total
    ("linear"), or held at lr ("constant")."""
    import torch

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if kind == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu",
                          dtype=torch.bfloat16)


def frozen_linears_to_bf16(model: Any) -> Callable[[], None]:
    """Store the frozen float32 weights of `model`'s linear layers in bf16, cast once; returns
    the function that puts the float32 tensors back.

    Under bf16 autocast every linear layer casts its float32 weight to bf16 at every call, in
    every micro-batch. LoRA never updates the base weights, so the cast can be made once: the
    same rounding, so the same numbers, without the copies. Trainable weights (the adapter)
    stay float32 for the optimizer, and so do weights shared with an embedding (a tied LM
    head): the embedding's output is the float32 residual stream. Only for use under
    autocast: outside it a float32 input meets a bf16 weight.
    """
    import torch

    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for param in (module.weight, module.bias):
            if (param is None or param.requires_grad or param.dtype != torch.float32
                    or id(param) in embedded):
                continue
            originals.append((param, param.data))
            param.data = param.data.to(torch.bfloat16)
    log.info("bf16: %d frozen linear weights kept in bf16", len(originals))

    def restore() -> None:
        for param, data in originals:
            param.data = data
        originals.clear()

    return restore


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    Without it, bf16 autocast is emulated and several times slower than fp32 (docs/results.md,
    "Training speed").
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _use_bf16(t: TrainConfig, device: str) -> bool:
    """train.bf16, or (None) bf16 on a GPU that has it and on CPUs with native bf16."""
    import torch

    if device.startswith("cuda"):
        supported = torch.cuda.is_bf16_supported()
        if t.bf16 and not supported:
            raise ConfigError("train.bf16 = true but this GPU has no bfloat16 support")
        return supported if t.bf16 is None else t.bf16
    if t.bf16 is None:
        return cpu_has_native_bf16()
    return t.bf16


def _enable_checkpointing(model: Any, lora: bool = True) -> None:
    """Activation checkpointing (named so from transformers 5; gradient_* before)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if lora:
        model.enable_input_require_grads()  # frozen embeddings: let gradients reach LoRA layers
    model.config.use_cache = False
