"""A run's state and its checkpoints: write, resume, prune; RNG states; the best adapter.

Every ``save_steps`` optimizer steps a checkpoint (adapter, optimizer, scheduler, RNG states,
step / epoch / position in the epoch, best-so-far, loss history) is written to
``RUN_DIR/checkpoints/step-N`` via a temporary folder and a rename. A killed run restarts from
its newest checkpoint: the epoch's shuffled order is recomputed from (seed, epoch) and the
consumed micro-batches are skipped, so the step count, the loss curve
(``RUN_DIR/train_log.jsonl``) and, on CPU, the final weights continue exactly as if it had never
stopped. Validation (:meth:`_Run.evaluate`) keeps the best adapter beside the checkpoints and
decides early stopping.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glossrec import weights
from glossrec.config import RunConfig
from glossrec.errors import ConfigError
from glossrec.fingerprint import differences
from glossrec.io import atomic_dir, read_json, write_json, write_jsonl
from glossrec.train.loss import Encoded, evaluate_losses
from glossrec.train.parallel import _Group
from glossrec.train.trackers import _Trackers

log = logging.getLogger(__name__)

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


@dataclass
class _Run:
    """What one training run holds while it runs; the loop (:mod:`glossrec.train.loop`) mutates
    `state` only."""

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

    @functools.cached_property
    def prior(self) -> dict[str, Any]:
        """glossrec_train.json of train.init_adapter, read once ({} for a fresh start): the
        totals (examples seen, seconds) behind this run."""
        init = self.cfg.train.init_adapter
        return weights.train_info(weights.record_dir(init)) if init else {}

    def train_info(self) -> dict[str, Any]:
        """glossrec_train.json of the weights as they stand: what this run did so far and, with
        train.init_adapter, the totals behind it. The final adapter and every checkpoint carry
        one, so a checkpoint is a whole weights folder too (an init_adapter, a model to ship
        before its run ends)."""
        s, cfg = self.state, self.cfg
        seconds = max((r.get("seconds", 0.0) for r in s.history), default=0.0)
        seen = sum(int(r.get("examples", 0)) for r in s.history)
        return {"model": cfg.model.name, "steps": s.step, "best_step": s.best_step,
                "best_valid_loss": s.best_loss, "stopped_early": s.stopped_early,
                "lora": cfg.lora.model_dump(mode="json"), "loss": cfg.train.loss,
                "method": cfg.train.method, "init_adapter": cfg.train.init_adapter,
                "examples_seen": seen,
                "examples_seen_total": seen + self.prior.get("examples_seen_total", 0),
                "train_seconds": round(seconds, 1),
                "train_seconds_total": round(seconds + self.prior.get("train_seconds_total", 0), 1)}

    def _save_weights(self, folder: Path) -> None:
        """The weights as they stand, with their glossrec_train.json (checkpoints, best)."""
        weights.save(self.model, folder, self.cfg.model.name)
        write_json(folder / weights.TRAIN_INFO, self.train_info())

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
            self._save_weights(tmp)
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
            atomic_dir(self.ckpt_root / name, self._save_weights)
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
        result = evaluate_losses(self.model, valid, pad_id, t.batch_size, self.device,
                                 self.bf16, t.valid_first_tokens)
        loss, first = result.loss, result.first
        s.last_eval_step = s.step
        improved = s.best_loss is None or loss < s.best_loss
        if improved:
            s.best_loss, s.best_step, s.bad_evals = loss, s.step, 0
            self.save_best()
        else:
            s.bad_evals += 1
        s.history.append({"step": s.step, "epoch": s.epoch, "valid_loss": loss,
                          **({"valid_loss_first": first} if first is not None else {}),
                          "best": improved})
        log.info("step %d: valid loss %.4f%s%s", s.step, loss,
                 f" (first {t.valid_first_tokens} tokens {first:.4f})" if first is not None else "",
                 " (best)" if improved else "")
        return s.bad_evals >= t.patience
