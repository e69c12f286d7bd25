"""Experiment tracking (train.report_to): the loss history to tensorboard, mlflow or wandb."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from glossrec.config import RunConfig

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
