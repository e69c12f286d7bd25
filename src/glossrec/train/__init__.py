"""LoRA (or whole-model) fine-tuning: glossrec's own training loop, in plain torch + peft.

Modules:

- :mod:`~glossrec.train.loop`: :func:`train` (the loop, readable in one function) and
  :func:`train_from_config` (prompts from a dataset's splits, then :func:`train`); the
  final adapter; :func:`validation_loss` and :func:`validation_losses` (a run's validation loss
  of its starting weights, the second also split by token position).
- :mod:`~glossrec.train.loss`: training texts as tokens (:func:`encode_pairs`), labels from the
  attention mask (:func:`make_labels`, :func:`collate`), the loss per label token and summed
  (:func:`token_losses`, :func:`loss_sum`) and the validation loss, also over the next item's
  first tokens and the rest (:func:`evaluate_loss`, :func:`evaluate_losses` and its
  :class:`ValidLosses`).
- :mod:`~glossrec.train.batching`: an epoch's shuffled micro-batches, their split under
  ``train.max_batch_tokens``, their grouping into optimizer steps, and what glibc does with the
  memory they free.
- :mod:`~glossrec.train.optim`: the optimizer, the learning-rate schedule, bf16 autocast (with
  the frozen weights in bf16) and activation checkpointing.
- :mod:`~glossrec.train.checkpoints`: the run's state (:class:`TrainState`), checkpoint write,
  resume and pruning, RNG states, the best adapter kept by validation.
- :mod:`~glossrec.train.parallel`: the data-parallel process group (torch.distributed).
- :mod:`~glossrec.train.trackers`: ``train.report_to`` (tensorboard, mlflow, wandb).

Why not transformers' ``Trainer``: the loop needs things the Trainer does not do as such.
The LM head runs only on the hidden states that predict a label, and a step's loss is the mean
over every label token of its accumulated micro-batches, which matters on a CPU budget. A
killed run resumes exactly: the epoch's order is recomputed from (seed, epoch), the consumed
micro-batches are skipped and the RNG states restored, so the step count, the loss curve and,
on CPU, the final weights continue as if it had never stopped. Long micro-batches are split by
a token cap without changing the gradient, and a right-padded batch runs without its padding
mask, so the largest forward pass stays within memory.
"""

from __future__ import annotations

from glossrec.train.checkpoints import TrainState, latest_checkpoint
from glossrec.train.loop import (TrainResult, subset, train, train_from_config, validation_loss,
                                 validation_losses)
from glossrec.train.loss import (IGNORE, Encoded, ValidLosses, collate, encode_pairs, evaluate_loss,
                                 evaluate_losses, first_label_tokens, loss_sum, make_labels,
                                 n_label_tokens, token_losses)
from glossrec.train.optim import cpu_has_native_bf16

__all__ = [
    "IGNORE", "Encoded", "TrainState", "TrainResult", "ValidLosses", "collate", "cpu_has_native_bf16",
    "encode_pairs", "evaluate_loss", "evaluate_losses", "first_label_tokens", "latest_checkpoint",
    "loss_sum", "make_labels", "n_label_tokens", "subset", "token_losses", "train",
    "train_from_config", "validation_loss", "validation_losses",
]
