"""The training loop: :func:`train` on (prompt, target) pairs, :func:`train_from_config` from a
dataset's splits; the best weights written to ``RUN_DIR/adapter``.

The paper's recipe, every number from ``TrainConfig``: micro-batch 4 x gradient accumulation 4
(one optimizer step per group of ``grad_accum`` micro-batches), 10 epochs, seed 3407,
validation loss every epoch (or every ``eval_steps``), the best adapter kept, early stopping
after 3 evaluations without improvement; the optimizer and schedule are in
:mod:`glossrec.train.optim`. A checkpoint every ``save_steps`` steps
(:mod:`glossrec.train.checkpoints`) is where a killed run resumes.

Output: ``RUN_DIR/adapter/`` holds only the best weights (a LoRA adapter, or with
``train.method = "full"`` a whole model: :mod:`glossrec.weights` owns both formats), a tokenizer
copy and ``glossrec_train.json``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from glossrec import weights
from glossrec.config import RunConfig, TrainConfig
from glossrec.data import Dataset
from glossrec.errors import ConfigError
from glossrec.fingerprint import stage_inputs
from glossrec.io import atomic_dir, write_json
from glossrec.progress import bars_on
from glossrec.prompts import PromptPair
from glossrec.rundir import RunDir
from glossrec.splits import Splits, prepare, sample_users
from glossrec.train.batching import (
    _epoch_batches, _groups, _release_freed_memory, _split_by_tokens, kept_freed_memory)
from glossrec.train.checkpoints import TrainState, _Run, _seed_all, latest_checkpoint
from glossrec.train.loss import (ValidLosses, collate, encode_pairs, evaluate_losses, label_weight,
                                 loss_sum, n_label_tokens)
from glossrec.train.optim import (
    _autocast, _enable_checkpointing, _optimizer, _schedule, _use_bf16, frozen_linears_to_bf16)
from glossrec.train.parallel import _process_group
from glossrec.train.trackers import _Trackers

log = logging.getLogger(__name__)

subset = sample_users
"""A reproducible random subset of n items, in their original order (all when n is None)."""


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


def _trainable_model(cfg: RunConfig, device: str, init: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) ready to train: LoRA-wrapped or whole, from train.init_adapter's
    weights when set and `init` (a resume loads its checkpoint instead, so it does not need
    them: they may have been retired since the run began)."""
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
    if init:
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


def _start_position(t: TrainConfig, lengths: Sequence[int]) -> tuple[int, int]:
    """(epoch, micro-batch in it) where train.start_examples begins: past one epoch's examples
    it continues into the next epoch's order, as the one long run would. Within the epoch, the
    first micro-batch not wholly taken by the examples before it: an epoch's micro-batches are
    not all full (the last of each length window is short), so examples are counted batch by
    batch, and a run's examples_seen_total starts its continuation exactly where it stopped."""
    epoch, offset = divmod(t.start_examples, len(lengths))
    seen = 0
    batches = _epoch_batches(lengths, t.batch_size, t.seed, epoch, t.group_by_length)
    for k, batch in enumerate(batches):
        if seen + len(batch) > offset:
            return epoch, k
        seen += len(batch)
    return epoch, len(batches)


def _check_start(t: TrainConfig, seen: int | None) -> None:
    """Warn when a continuation does not start where its init_adapter stopped: a nonzero
    train.start_examples other than the adapter's examples_seen_total skips or repeats part of
    the seeded order. (0 is a fresh order, e.g. other data, and is not checked.)"""
    if not t.start_examples or seen is None or t.start_examples == seen:
        return
    gap = t.start_examples - seen
    log.warning("train.start_examples = %d, but train.init_adapter %r has seen %d examples: "
                "this run %s %d examples of the order (set train.start_examples = %d to "
                "continue where it stopped)", t.start_examples, t.init_adapter, seen,
                "skips" if gap > 0 else "repeats", abs(gap), seen)


def _optimizer_step(run: _Run, micro: list[dict[str, Any]]) -> dict[str, Any]:
    """Accumulate the micro-batches' gradients, clip, step: the log record of one step.

    Each micro-batch's loss is divided by the label tokens of the whole step (their summed
    weights under ``train.head_weight``), so the step's loss is a token mean however the texts
    were grouped.
    """
    import torch

    t = run.cfg.train
    n_tok = max(1, sum(n_label_tokens(b) for b in micro))
    norm = max(1.0, sum(label_weight(b) for b in micro))  # n_tok unless train.head_weight
    step_loss = 0.0
    g = run.group
    for batch in micro[g.rank::g.size]:  # this process's share of the step (all of it alone)
        with _autocast(run.device, run.bf16):
            loss = loss_sum(run.model, batch, run.device) / norm
        loss.backward()
        step_loss += float(loss.detach())
        del loss
        if t.trim_memory:
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


def _resume_latest(run: _Run, total: int, ckpt: Path | None) -> int | None:
    """Continue from `ckpt`, run_dir's newest checkpoint, if any: the step it resumed from."""
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
    ckpt = latest_checkpoint(run_dir)
    model, tok = _trainable_model(cfg, device, init=ckpt is None)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train_data = encode_pairs(tok, train_pairs, t.loss, cfg.prompt.max_length,
                              heads=t.weighs_heads)
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
    restore_fp32 = _bf16_frozen_weights(run)
    resumed_from = _resume_latest(run, total, ckpt)
    if resumed_from is None:
        _check_start(t, run.prior.get("examples_seen_total"))
        run.state.epoch, run.state.batch_in_epoch = _start_position(t, lengths)
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
    with contextlib.nullcontext() if t.trim_memory else kept_freed_memory():
        while not s.finished and s.step < total:
            batches = _epoch_batches(lengths, t.batch_size, t.seed, s.epoch, t.group_by_length)
            for g, group in _groups(batches, s.batch_in_epoch, t.grad_accum):
                micro = [collate([train_data[i] for i in part], pad_id, t.head_tokens,
                                 t.head_weight) for b in group
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
    restore_fp32()
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


def _bf16_frozen_weights(run: _Run) -> Callable[[], None]:
    """train.bf16_weights: the frozen base weights in bf16 for a bf16 LoRA run (see
    glossrec.train.optim.frozen_linears_to_bf16); what puts the float32 ones back."""
    t = run.cfg.train
    if (run.bf16 and t.bf16_weights and t.method == "lora"
            and not getattr(run.model, "is_loaded_in_4bit", False)):
        return frozen_linears_to_bf16(run.model)
    return lambda: None


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
        write_json(tmp / weights.TRAIN_INFO, run.train_info())

    return atomic_dir(RunDir(run.run_dir).adapter, fill)


def train_from_config(cfg: RunConfig, run_dir: Path,
                      on_step: Callable[[TrainState], None] | None = None,
                      ds: Dataset | None = None, splits: Splits | None = None) -> TrainResult:
    """Make the paper's prompts from the dataset's splits, and train. `ds` and `splits` are
    loaded and made here (glossrec.splits.prepare) unless a caller that has them (glossrec
    run) hands them over."""
    train_pairs, valid_pairs = _pairs(cfg, ds, splits)
    return train(cfg, run_dir, train_pairs, valid_pairs, on_step=on_step)


def validation_loss(cfg: RunConfig, ds: Dataset | None = None,
                    splits: Splits | None = None) -> float:
    """The validation loss a training run with `cfg` records, of the weights it would start
    from (train.init_adapter, else the base model), without training: the same validation
    users (train.max_valid_examples, train.seed), texts and loss (train.valid_loss). Compares
    adapters, or recipes, on one scale."""
    return validation_losses(cfg, ds, splits).loss


def validation_losses(cfg: RunConfig, ds: Dataset | None = None, splits: Splits | None = None,
                      first_tokens: int = 0, split: Literal["valid", "train"] = "valid"
                      ) -> ValidLosses:
    """:func:`validation_loss` with its sums and token counts, and with `first_tokens` split
    into each text's first tokens and the rest (what ``train.valid_first_tokens`` records).

    ``split="train"`` scores the same loss on as many training texts instead (drawn with
    train.seed): their last item is a target every epoch has trained on, so the gap between
    the two splits is what the weights memorised rather than learned to generalise."""
    from glossrec.models import resolve_device

    t = cfg.train
    _, valid_pairs = _pairs(cfg, ds, splits, with_train=False, valid_split=split)
    device = resolve_device()
    model, tok = _trainable_model(cfg, device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    data = encode_pairs(tok, valid_pairs, t.loss if t.valid_loss == "train" else "target",
                        cfg.prompt.max_length)
    return evaluate_losses(model, data, pad_id, t.batch_size, device, _use_bf16(t, device),
                           first_tokens)


def scored_examples(cfg: RunConfig, splits: Splits, split: Literal["valid", "train"] = "valid"
                    ) -> list[Any]:
    """The examples of `split` whose next item :func:`validation_losses` scores: at most
    train.max_valid_examples, drawn with train.seed."""
    return subset(splits.get(split), cfg.train.max_valid_examples, cfg.train.seed)


def _pairs(cfg: RunConfig, ds: Dataset | None, splits: Splits | None, with_train: bool = True,
           valid_split: Literal["valid", "train"] = "valid"
           ) -> tuple[list[PromptPair], list[PromptPair]]:
    """(training, validation) prompt pairs of the dataset's splits, sampled as train() samples
    them (training pairs only `with_train`; the "validation" pairs drawn from `valid_split`)."""
    from glossrec.models import load_tokenizer
    from glossrec.prompts import PromptBuilder, make_pairs

    prep = prepare(cfg, ds, splits)
    ds, splits = prep.dataset, prep.splits
    assert splits is not None
    t = cfg.train
    # Sample examples before rendering (cheaper); train() samples the same indices (no-op here).
    train_ex = subset(splits.train, t.max_examples, t.seed) if with_train else []
    valid_ex = scored_examples(cfg, splits, valid_split)
    builder = PromptBuilder.from_config(load_tokenizer(cfg.model), cfg.prompt,
                                        ds.catalog.item_format)
    return (make_pairs(train_ex, ds.catalog, builder, "train"),
            make_pairs(valid_ex, ds.catalog, builder, "train"))
