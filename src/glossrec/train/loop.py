"""LoRA fine-tuning: the whole training loop in one readable file (plain torch + peft).

The paper's recipe, every number from ``TrainConfig``: AdamW (8-bit paged on CUDA, 8-bit for
4-bit QLoRA on a CPU whose bitsandbytes has a CPU backend, torch AdamW otherwise) at lr 1e-4,
linear schedule with 300 warm-up steps, weight decay 0.01, micro-batch 4 x gradient
accumulation 4, 10 epochs, seed 3407, validation loss every epoch (or every
``eval_steps``), the best adapter kept, early stopping after 3 evaluations without improvement.

Loss: causal-LM cross-entropy over the whole training text ("full", the paper) or only over the
target line + EOS ("target"). Labels come from the attention mask, never from the pad id: the pad
token of SmolLM2 IS its EOS, and the EOS that ends a training text must be learned. The loss of
one optimizer step is the mean over every label token of its accumulated micro-batches (not a
mean of micro-batch means), so padding and batch composition do not reweight examples.

Resumability: every ``save_steps`` optimizer steps a checkpoint (adapter, optimizer, scheduler,
RNG states, step / epoch / position in the epoch, best-so-far, loss history) is written to
``RUN_DIR/checkpoints/step-N`` via a temporary folder and a rename. A killed run restarts from
its newest checkpoint: the epoch's shuffled order is recomputed from (seed, epoch) and the
consumed micro-batches are skipped, so the step count, the loss curve (``RUN_DIR/train_log.jsonl``)
and, on CPU, the final weights continue exactly as if it had never stopped.

Output: ``RUN_DIR/adapter/`` holds only the best weights (a LoRA adapter, or with
``train.method = "full"`` a whole model: :mod:`glossrec.weights` owns both formats), a tokenizer
copy and ``glossrec_train.json``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glossrec import weights
from glossrec.config import RunConfig, TrainConfig
from glossrec.data import Dataset
from glossrec.errors import ConfigError
from glossrec.fingerprint import differences, stage_inputs
from glossrec.progress import bars_on
from glossrec.io import atomic_dir, read_json, write_json, write_jsonl
from glossrec.prompts import PromptPair
from glossrec.splits import Splits, prepare, sample_users
from glossrec.rundir import RunDir

__all__ = [
    "Encoded", "TrainState", "TrainResult", "encode_pairs", "make_labels", "collate",
    "subset", "train", "train_from_config", "latest_checkpoint",
]

log = logging.getLogger(__name__)

IGNORE = -100


# --- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """One training text as token ids; positions before `loss_start` are not labels."""

    input_ids: tuple[int, ...]
    loss_start: int = 0


subset = sample_users
"""A reproducible random subset of n items, in their original order (all when n is None)."""


def encode_pairs(tokenizer: Any, pairs: Sequence[PromptPair], loss: str = "full",
                 max_length: int | None = None) -> list[Encoded]:
    """Token ids of prompt + target + EOS for each pair.

    Prompt and target are tokenized separately (prompt with the tokenizer's special tokens, e.g.
    a BOS), exactly as generation sees the prompt; the EOS id is appended, not parsed from text.
    Pairs longer than `max_length` (only when not built by PromptBuilder) lose tokens from the
    left.
    """
    if not pairs:
        return []
    eos = tokenizer.eos_token_id
    prompts = tokenizer([p.prompt for p in pairs])["input_ids"]
    targets = tokenizer([p.target for p in pairs], add_special_tokens=False)["input_ids"]
    out, cut = [], 0
    for p_ids, t_ids in zip(prompts, targets):
        ids = list(p_ids) + list(t_ids) + [eos]
        start = 0 if loss == "full" else len(p_ids)
        if max_length is not None and len(ids) > max_length:
            drop = len(ids) - max_length
            ids, start, cut = ids[drop:], max(0, start - drop), cut + 1
        out.append(Encoded(tuple(ids), start))
    if cut:
        log.warning("%d training texts exceeded %s tokens and were cut from the left",
                    cut, max_length)
    return out


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


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-pad a micro-batch to its longest text (dynamic padding, no packing)."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        input_ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
        attention[i, :len(e.input_ids)] = 1
    starts = torch.tensor([e.loss_start for e in batch], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention,
            "labels": make_labels(input_ids, attention, starts)}


def n_label_tokens(batch: dict[str, Any]) -> int:
    """Tokens that are predicted (the first position predicts nothing after the shift)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


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


def loss_sum(model: Any, batch: dict[str, Any], device: str, label_positions: bool = True,
             causal_only: bool = True) -> Any:
    """Summed next-token cross-entropy over the batch's label tokens (float32).

    With `label_positions` (the default) the LM head runs only on the hidden states that predict
    a label: with target-only loss that is ~10% of the positions, and even with whole-text loss
    the padding is skipped. The 49k-wide fp32 logits of every position are the largest tensors
    of a SmolLM2 step. Models whose logits are not a plain head of the hidden state take the
    full-logit path.

    With `causal_only` a right-padded batch is run without its padding mask: a real token only
    attends to earlier positions, all real, so its hidden state is the same, and the padding's
    own outputs are never labels. Without a mask, SDPA runs its fused causal kernel instead of
    materializing a mask and every attention matrix: a SmolLM2 micro-batch of 4 x 948 tokens
    peaked at 1.7 GB instead of 8.8 GB (forward + backward). Both equal the reference loss
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
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
    body, head = parts
    hidden = body(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
    keep = targets != IGNORE
    logits = head(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, targets[keep], reduction="sum")


# --- state ----------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed."""
    best_loss: float | None = None
    best_step: int | None = None
    best_dir: str | None = None
    bad_evals: int = 0
    last_eval_step: int | None = None
    stopped_early: bool = False
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    epochs: float
    best_step: int | None
    best_valid_loss: float | None
    stopped_early: bool
    resumed_from: int | None
    history: list[dict[str, Any]]

    def __post_init__(self) -> None:
        # Plain attributes, not fields: asdict()/JSON of a result must not copy a model.
        self.model: Any = None
        """The trained peft model with the best adapter's weights (what RUN_DIR/adapter has)."""
        self.tokenizer: Any = None


_STEP_DIR = re.compile(r"^step-(\d+)$")
_BEST_DIR = re.compile(r"^best-step-(\d+)$")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder (incomplete ones never get their final name)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / "state.json").is_file()]
    return max(found)[1] if found else None


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- experiment tracking ----------------------------------------------------------------------


class _Trackers:
    """train.report_to: each history record, once, to tensorboard / mlflow / wandb."""

    def __init__(self, names: Sequence[str], run_dir: Path, cfg: RunConfig) -> None:
        from glossrec.errors import import_optional

        self.sent = 0
        self.sinks: list[Callable[[dict[str, float], int], None]] = []
        self.closers: list[Callable[[], Any]] = []
        for name in names:
            if name == "tensorboard":
                import_optional("tensorboard", "tracking", 'train.report_to = ["tensorboard"]')
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

                def tb(values: dict[str, float], step: int, w: Any = writer) -> None:
                    for k, v in values.items():
                        w.add_scalar(f"train/{k}", v, step)
                    w.flush()

                self.sinks.append(tb)
                self.closers.append(writer.close)
            elif name == "mlflow":
                mlflow = import_optional("mlflow", "tracking", 'train.report_to = ["mlflow"]')
                if not os.environ.get("MLFLOW_TRACKING_URI"):
                    mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
                mlflow.start_run(run_name=run_dir.name)
                mlflow.log_params({"model": cfg.model.name, "method": cfg.train.method,
                                   "learning_rate": cfg.train.learning_rate, "loss": cfg.train.loss})
                self.sinks.append(lambda values, step: mlflow.log_metrics(values, step=step))
                self.closers.append(mlflow.end_run)
            elif name == "wandb":
                wandb = import_optional("wandb", "tracking", 'train.report_to = ["wandb"]')
                wandb.init(dir=str(run_dir), name=run_dir.name, config=cfg.model_dump(mode="json"))
                self.sinks.append(lambda values, step: wandb.log(values, step=step))
                self.closers.append(wandb.finish)

    def log(self, history: Sequence[dict[str, Any]]) -> None:
        for rec in history[self.sent:]:
            values = {k: float(v) for k, v in rec.items()
                      if k not in ("step", "best") and isinstance(v, (int, float)) and not isinstance(v, bool)}
            for sink in self.sinks:
                sink(values, int(rec["step"]))
        self.sent = len(history)

    def close(self) -> None:
        for close in self.closers:
            close()


# --- data parallelism -------------------------------------------------------------------------


@dataclass
class _Group:
    """The data-parallel processes of one training run (one process: rank 0 of 1).

    `accelerate launch --num_processes N -m glossrec.cli train ...`, torchrun, or `glossrec
    train --processes N` start N copies; each finds its rank in the environment (RANK,
    WORLD_SIZE). Every process builds the same global step (the same micro-batches, in the same
    order) and computes the gradient of its share of them (micro-batches rank, rank + N, ...);
    the shares are summed across processes (gloo on CPU, NCCL on GPUs), so a step equals the
    one-process step on the same global batch. Only rank 0 writes (checkpoints, log, adapter);
    every process reads the same checkpoint to resume.
    """

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_grads(self, params: Sequence[Any]) -> None:
        import torch
        import torch.distributed as dist

        for p in params:
            if p.grad is None:  # this process had no micro-batch this step
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)

    def sum(self, value: float) -> float:
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def _process_group(device: str) -> tuple[_Group, str]:
    """This process's group, joined if the launcher started several; and its device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return _Group(), device
    import datetime

    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:  # the cores are shared: each process takes its part
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // size))
    if not dist.is_initialized():
        # On GPUs: NCCL for the gradients, gloo for the CPU scalars (_Group.sum) NCCL cannot take.
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo",
                                timeout=datetime.timedelta(minutes=10))
    return _Group(dist.get_rank(), dist.get_world_size()), device


# --- optimizer, schedule, precision ---------------------------------------------------------


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    Without it, bf16 autocast is emulated and slow: on this project's AMD EPYC (AVX2 only),
    one SmolLM2 optimizer step on 4 Beauty texts took 463 s with bf16 autocast vs 57 s in fp32.
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


def evaluate_loss(model: Any, data: Sequence[Encoded], pad_id: int, batch_size: int,
                  device: str, bf16: bool) -> float:
    """Token-mean validation loss (length-sorted batches: less padding, same result)."""
    import torch

    order = sorted(range(len(data)), key=lambda i: len(data[i].input_ids))
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            batch = collate([data[i] for i in order[s:s + batch_size]], pad_id)
            with _autocast(device, bf16):
                total += float(loss_sum(model, batch, device))
            count += n_label_tokens(batch)
    if was_training:
        model.train()
    return total / max(count, 1)


def _epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                   group_by_length: bool = False) -> list[list[int]]:
    """The shuffled micro-batches of one epoch, a pure function of (seed, epoch).

    With `group_by_length`, each window of 64 micro-batches of the shuffled order is sorted by
    length before it is cut, and the micro-batches are shuffled again: every batch pads to a
    near-equal length, while an epoch still visits the examples in random order.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * 64
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


# --- the loop -------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one training run holds while it runs; the loop below mutates `state` only."""

    cfg: RunConfig
    run_dir: Path
    model: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    device: str
    bf16: bool
    state: TrainState
    params: list[Any] = field(default_factory=list)
    """The trainable parameters (what the optimizer steps and gradient clipping sees)."""
    group: _Group = field(default_factory=_Group)
    trackers: _Trackers | None = None

    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        """checkpoints/step-N (rank 0 writes; the others wait until it is there)."""
        path = self.ckpt_root / f"step-{self.state.step:07d}"
        if self.group.main:
            self._write_checkpoint()
        self.group.barrier()
        return path

    def _write_checkpoint(self) -> Path:
        import torch

        step = self.state.step

        def fill(tmp: Path) -> None:
            weights.save(self.model, tmp, self.cfg.model.name)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(_rng_state(), tmp / "rng.pt")
            write_json(tmp / "state.json", asdict(self.state))

        path = atomic_dir(self.ckpt_root / f"step-{step:07d}", fill)
        self._prune(keep_step=step)
        return path

    def _prune(self, keep_step: int) -> None:
        """Keep only the newest checkpoint and the best adapter it refers to."""
        for p in self.ckpt_root.iterdir():
            m_step, m_best = _STEP_DIR.match(p.name), _BEST_DIR.match(p.name)
            if m_step and int(m_step.group(1)) != keep_step:
                shutil.rmtree(p, ignore_errors=True)
            elif m_best and p.name != self.state.best_dir and int(m_best.group(1)) <= keep_step:
                shutil.rmtree(p, ignore_errors=True)

    def save_best(self) -> None:
        name = f"best-step-{self.state.step:07d}"
        if self.group.main:
            atomic_dir(self.ckpt_root / name,
                       lambda tmp: weights.save(self.model, tmp, self.cfg.model.name))
        self.group.barrier()
        self.state.best_dir = name

    def resume(self, ckpt: Path) -> None:
        from glossrec.models import torch_load

        state = TrainState(**read_json(ckpt / "state.json"))
        if state.fingerprint and state.fingerprint != self.state.fingerprint:
            diff = differences(state.fingerprint, self.state.fingerprint)
            raise ConfigError(
                f"{ckpt}: this checkpoint was made with different settings ({', '.join(diff)}); "
                "use a new run folder or delete its checkpoints/ to start over")
        weights.load_into(self.model, ckpt, self.device)
        self.optimizer.load_state_dict(torch_load(ckpt / "optimizer.pt", weights_only=False,
                                                  map_location=self.device))
        self.scheduler.load_state_dict(torch_load(ckpt / "scheduler.pt", weights_only=False))
        _set_rng_state(torch_load(ckpt / "rng.pt", weights_only=False))
        self.state = state
        # Anything written after this checkpoint by the killed run will be redone.
        for p in self.ckpt_root.iterdir():
            m = _BEST_DIR.match(p.name)
            if (m and int(m.group(1)) > state.step) or p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)
        self.write_log()

    def write_log(self) -> None:
        """train_log.jsonl (the whole history), and the new records to the trackers."""
        if not self.group.main:
            return
        write_jsonl(self.run_dir / "train_log.jsonl", self.state.history)
        if self.trackers is not None:
            self.trackers.log(self.state.history)

    def evaluate(self, valid: Sequence[Encoded], pad_id: int) -> bool:
        """Validate, keep the best adapter; True when early stopping says stop."""
        t, s = self.cfg.train, self.state
        loss = evaluate_loss(self.model, valid, pad_id, t.batch_size, self.device, self.bf16)
        s.last_eval_step = s.step
        improved = s.best_loss is None or loss < s.best_loss
        if improved:
            s.best_loss, s.best_step, s.bad_evals = loss, s.step, 0
            self.save_best()
        else:
            s.bad_evals += 1
        s.history.append({"step": s.step, "epoch": s.epoch, "valid_loss": loss,
                          "best": improved})
        log.info("step %d: valid loss %.4f%s", s.step, loss, " (best)" if improved else "")
        return s.bad_evals >= t.patience


def _split_by_tokens(batch: list[int], lengths: Sequence[int], cap: int | None) -> list[list[int]]:
    """Cut a micro-batch so that each part pads to at most `cap` tokens (one text at least).

    The gradient is unchanged: a step's loss is the sum over its label tokens divided by their
    count, however its texts are grouped. Only the memory of the largest forward pass shrinks.
    """
    if cap is None:
        return [batch]
    parts: list[list[int]] = []
    for i in sorted(batch, key=lambda i: lengths[i]):
        if parts and (len(parts[-1]) + 1) * lengths[i] <= cap:
            parts[-1].append(i)
        else:
            parts.append([i])
    return parts


def _release_freed_memory() -> None:
    """Return the allocator's freed pages to the OS (glibc's malloc_trim; a no-op elsewhere).

    Micro-batches of different lengths leave glibc's heap fragmented, and freed memory is kept:
    measured on full Beauty (bench/train_speed.py), peak RSS grew to ~10 GB over 3 steps whose
    live tensors need a fraction of that. Trimming after each micro-batch costs milliseconds.
    """
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _libc_malloc_trim() -> Any:
    """glibc's malloc_trim, looked up once; None where there is no glibc."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _groups(batches: list[list[int]], start: int, accum: int) -> Iterator[tuple[int, list[list[int]]]]:
    for g in range(start, len(batches), accum):
        yield g, batches[g:g + accum]


def _trainable_model(cfg: RunConfig, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) ready to train: LoRA-wrapped or whole, from train.init_adapter's
    weights when set."""
    from glossrec.models import apply_lora, count_parameters, load_model

    t = cfg.train
    model, tok = load_model(cfg.model, trainable=True, device=device,
                            max_seq_length=cfg.prompt.max_length)
    four_bit = getattr(model, "is_loaded_in_4bit", False)
    if t.gradient_checkpointing and not four_bit:
        _enable_checkpointing(model, lora=t.method == "lora")
    if t.method == "lora":
        model = apply_lora(model, cfg.lora, seed=t.seed)
    elif four_bit:
        raise ConfigError('train.method = "full" cannot train 4-bit weights; set '
                          "model.load_in_4bit = false")
    _init_weights(model, cfg, device)
    trainable, total_params = count_parameters(model)
    log.info("%s: %s trainable of %s parameters", t.method, f"{trainable:,}", f"{total_params:,}")
    return model, tok


def _total_steps(t: TrainConfig, n_train: int) -> int:
    """train.max_steps, else the optimizer steps of train.epochs epochs."""
    steps_per_epoch = math.ceil(math.ceil(n_train / t.batch_size) / t.grad_accum)
    total = t.max_steps if t.max_steps is not None else steps_per_epoch * t.epochs
    if t.warmup_steps >= total:
        log.warning("train.warmup_steps (%d) >= total steps (%d): the learning rate never "
                    "reaches train.learning_rate", t.warmup_steps, total)
    return total


def _start_batch(t: TrainConfig, n_train: int) -> int:
    """The first epoch's starting micro-batch for train.start_examples."""
    if t.start_examples >= n_train:
        raise ConfigError(f"train.start_examples ({t.start_examples}) must be below the "
                          f"{n_train} training examples of an epoch")
    return t.start_examples // t.batch_size


def _optimizer_step(run: _Run, micro: list[dict[str, Any]]) -> dict[str, Any]:
    """Accumulate the micro-batches' gradients, clip, step: the log record of one step.

    Each micro-batch's loss is divided by the label tokens of the whole step, so the step's
    loss is a token mean however the texts were grouped.
    """
    import torch

    t = run.cfg.train
    n_tok = max(1, sum(n_label_tokens(b) for b in micro))
    step_loss = 0.0
    g = run.group
    for batch in micro[g.rank::g.size]:  # this process's share of the step (all of it alone)
        with _autocast(run.device, run.bf16):
            loss = loss_sum(run.model, batch, run.device) / n_tok
        loss.backward()
        step_loss += float(loss.detach())
        del loss
        _release_freed_memory()
    if g.size > 1:
        g.sum_grads(run.params)
        step_loss = g.sum(step_loss)
    if t.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.params, t.max_grad_norm)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {"loss": step_loss, "lr": lr, "tokens": n_tok,
            "padded_tokens": sum(b["input_ids"].numel() for b in micro),
            "real_tokens": sum(int(b["attention_mask"].sum()) for b in micro)}


def _resume_latest(run: _Run, total: int) -> int | None:
    """Continue from run_dir's newest checkpoint, if any: the step it resumed from."""
    ckpt = latest_checkpoint(run.run_dir)
    if ckpt is None:
        return None
    run.resume(ckpt)
    if run.state.finished and not run.state.stopped_early and run.state.step < total:
        run.state.finished = False  # a longer run asked for (e.g. a larger max_steps)
    log.info("resuming from %s (step %d)", ckpt, run.state.step)
    return run.state.step


def train(cfg: RunConfig, run_dir: Path, train_pairs: Sequence[PromptPair],
          valid_pairs: Sequence[PromptPair] = (),
          on_step: Callable[[TrainState], None] | None = None) -> TrainResult:
    """Fine-tune on (prompt, target) pairs; resume from run_dir's checkpoints.

    `on_step` is called after every optimizer step (progress reporting, tests).
    """
    from tqdm.auto import tqdm

    from glossrec.models import resolve_device

    t = cfg.train
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_pairs = subset(train_pairs, t.max_examples, t.seed)
    valid_pairs = subset(valid_pairs, t.max_valid_examples, t.seed)
    if not train_pairs:
        raise ConfigError("no training examples (check the dataset and train.max_examples)")

    # --- setup: model, data, optimizer, schedule; then resume where a killed run stopped
    _seed_all(t.seed)
    procs, device = _process_group(resolve_device())
    model, tok = _trainable_model(cfg, device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train_data = encode_pairs(tok, train_pairs, t.loss, cfg.prompt.max_length)
    valid_data = encode_pairs(tok, valid_pairs, t.loss if t.valid_loss == "train" else "target",
                              cfg.prompt.max_length)
    lengths = [len(e.input_ids) for e in train_data]
    total = _total_steps(t, len(train_data))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, t, device, getattr(model, "is_loaded_in_4bit", False))
    state = TrainState(fingerprint=stage_inputs(cfg, "train", n_train=len(train_data),
                                                n_valid=len(valid_data)))
    run = _Run(cfg, run_dir, model, tok, optimizer,
               _schedule(optimizer, t.warmup_steps, total, t.schedule), device,
               _use_bf16(t, device), state, params, procs)
    resumed_from = _resume_latest(run, total)
    if resumed_from is None:
        run.state.batch_in_epoch = _start_batch(t, len(train_data))
    if t.report_to and procs.main:  # a resumed run sends only the steps after its checkpoint
        run.trackers = _Trackers(t.report_to, run_dir, cfg)
        run.trackers.sent = len(run.state.history)

    # --- the loop: one optimizer step per group of grad_accum micro-batches
    s = run.state
    model.train()
    bar = tqdm(total=total, initial=min(s.step, total), desc="train", unit="step",
               dynamic_ncols=True, disable=not (procs.main and bars_on()))
    # Wall-clock seconds continue across resumes, like the step count.
    t0 = time.perf_counter() - max((r.get("seconds", 0.0) for r in s.history), default=0.0)
    while not s.finished and s.step < total:
        batches = _epoch_batches(lengths, t.batch_size, t.seed, s.epoch, t.group_by_length)
        for g, group in _groups(batches, s.batch_in_epoch, t.grad_accum):
            micro = [collate([train_data[i] for i in part], pad_id) for b in group
                     for part in _split_by_tokens(b, lengths, t.max_batch_tokens)]
            record = _optimizer_step(run, micro)
            s.step += 1
            s.batch_in_epoch = g + len(group)
            end_of_epoch = s.batch_in_epoch >= len(batches)
            s.history.append({"step": s.step,
                              "epoch": round(s.epoch + s.batch_in_epoch / len(batches), 4),
                              **record, "examples": sum(len(b) for b in group),
                              "seconds": round(time.perf_counter() - t0, 3)})
            if end_of_epoch:
                s.epoch, s.batch_in_epoch = s.epoch + 1, 0
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", epoch=s.epoch)

            # --- validation (best weights kept, early stopping) and checkpoints
            last = s.step >= total
            due = (s.step % t.eval_steps == 0) if t.eval_steps else end_of_epoch
            if valid_data and (due or last) and s.last_eval_step != s.step:
                s.stopped_early = run.evaluate(valid_data, pad_id)
            s.finished = last or s.stopped_early
            if s.step % t.save_steps == 0 or s.finished:
                run.save_checkpoint()
            run.write_log()
            if on_step is not None:
                on_step(s)
            if s.finished or end_of_epoch:
                break
    bar.close()
    s.finished = True  # also when resuming a run that had already finished its steps
    if run.trackers is not None:
        run.trackers.close()

    # --- the result: the best weights, in RUN_DIR/adapter and in the returned model
    adapter = RunDir(run_dir).adapter
    if run.group.main:
        _write_final_adapter(run)
    run.group.barrier()
    weights.load_into(model, adapter, device)  # like load_best_model_at_end
    model.eval()
    n_batches = math.ceil(len(train_data) / t.batch_size)
    result = TrainResult(adapter, s.step, s.epoch + s.batch_in_epoch / max(n_batches, 1),
                         s.best_step, s.best_loss, s.stopped_early, resumed_from, s.history)
    result.model, result.tokenizer = model, tok
    return result


def _init_weights(model: Any, cfg: RunConfig, device: str) -> None:
    """Where training starts (glossrec.weights): train.init_adapter's weights when set, checked
    to fit (a resume then loads the run's own checkpoint over them). model.weights is never a
    starting point: it names the weights a run uses instead of training."""
    if cfg.train.init_adapter is None:
        if cfg.model.weights is not None:
            log.warning("model.weights = %r is not where training starts (train.init_adapter "
                        "is): training a fresh adapter, whose weights then come before "
                        "model.weights", cfg.model.weights)
        return
    folder = weights.check_init(cfg.train.init_adapter, cfg.train.method, cfg.lora)  # type: ignore[arg-type]
    weights.load_into(model, folder, device)
    log.info("initial weights from %s", folder)


def _write_final_adapter(run: _Run) -> Path:
    """RUN_DIR/adapter: the best adapter (or the last one without validation), atomically."""
    s = run.state
    best = run.ckpt_root / s.best_dir if s.best_dir else None

    seconds = max((r.get("seconds", 0.0) for r in s.history), default=0.0)

    def fill(tmp: Path) -> None:
        if best is not None and best.is_dir() and any(best.glob("*.safetensors")):
            for f in best.iterdir():
                if f.is_file() and f.name != "README.md":
                    shutil.copy2(f, tmp / f.name)
        else:
            weights.save(run.model, tmp, run.cfg.model.name)
            for extra in tmp.glob("README.md"):
                extra.unlink()
        run.tokenizer.save_pretrained(str(tmp))
        write_json(tmp / weights.TRAIN_INFO, {
            "model": run.cfg.model.name, "steps": s.step, "best_step": s.best_step,
            "best_valid_loss": s.best_loss, "stopped_early": s.stopped_early,
            "lora": run.cfg.lora.model_dump(mode="json"), "loss": run.cfg.train.loss,
            "method": run.cfg.train.method, "init_adapter": run.cfg.train.init_adapter,
            "examples_seen": _examples_seen(s.history),
            "examples_seen_total": _examples_seen(s.history) + _prior(run.cfg, "examples_seen_total"),
            "train_seconds": round(seconds, 1),
            "train_seconds_total": round(seconds + _prior(run.cfg, "train_seconds_total"), 1)})

    return atomic_dir(RunDir(run.run_dir).adapter, fill)


def _examples_seen(history: Sequence[dict[str, Any]]) -> int:
    return sum(int(r.get("examples", 0)) for r in history)


def _prior(cfg: RunConfig, key: str) -> float:
    """A total (examples seen, seconds) behind train.init_adapter (0 for a fresh start)."""
    if cfg.train.init_adapter is None:
        return 0
    return weights.train_info(weights.resolve_weights(cfg.train.init_adapter)).get(key, 0)


def train_from_config(cfg: RunConfig, run_dir: Path,
                      on_step: Callable[[TrainState], None] | None = None,
                      ds: Dataset | None = None, splits: Splits | None = None) -> TrainResult:
    """Make the paper's prompts from the dataset's splits, and train. `ds` and `splits` are
    loaded and made here (glossrec.splits.prepare) unless a caller that has them (glossrec
    run) hands them over."""
    from glossrec.models import load_tokenizer
    from glossrec.prompts import PromptBuilder, make_pairs

    prep = prepare(cfg, ds, splits)
    ds, splits = prep.dataset, prep.splits
    assert splits is not None
    t = cfg.train
    # Sample examples before rendering (cheaper); train() samples the same indices (no-op here).
    train_ex = subset(splits.train, t.max_examples, t.seed)
    valid_ex = subset(splits.valid, t.max_valid_examples, t.seed)
    builder = PromptBuilder.from_config(load_tokenizer(cfg.model), cfg.prompt,
                                        ds.catalog.item_format)
    train_pairs = make_pairs(train_ex, ds.catalog, builder, "train")
    valid_pairs = make_pairs(valid_ex, ds.catalog, builder, "train")
    return train(cfg, run_dir, train_pairs, valid_pairs, on_step=on_step)
