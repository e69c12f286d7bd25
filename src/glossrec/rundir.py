"""The run directory's layout: the one place that names its files and folders.

A run directory is the unit of work (README, "How it works"): ``config.toml`` (the resolved
config), ``manifest.json`` (finished stages), ``checkpoints/``, ``adapter/``,
``train_log.jsonl``, ``generations.jsonl`` (``generations.valid.jsonl`` for the validation
split), ``index/`` (the live catalog a service reads), ``baseline/`` (an ID-based model), ``metrics.json``, ``rankings.jsonl``,
``report.md``, ``report.png``, and for a full run the baselines in ``lis-<retriever>/`` and
``gloss-<retriever>/`` (each a run directory of its own).

This module sits below the stages: it imports only ``config``, ``io`` and ``errors``, so every
stage, the pipeline, the CLI and the service may use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glossrec.config import RunConfig, config_to_toml, load_config
from glossrec.errors import ConfigError
from glossrec.io import atomic_write

__all__ = [
    "RunDir", "CONFIG_FILE", "MANIFEST_FILE", "CHECKPOINTS_DIR", "ADAPTER_DIR", "TRAIN_LOG_FILE",
    "GENERATIONS", "INDEX_DIR", "BASELINE_DIR", "METRICS_FILE", "RANKINGS_FILE", "REPORT_MD", "REPORT_PNG",
]

CONFIG_FILE = "config.toml"
"""The resolved config. A shipped model's folder carries one under the same name."""
MANIFEST_FILE = "manifest.json"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
TRAIN_LOG_FILE = "train_log.jsonl"
GENERATIONS = {"test": "generations.jsonl", "valid": "generations.valid.jsonl"}
"""Generated texts per split."""
INDEX_DIR = "index"
BASELINE_DIR = "baseline"
"""An ID-based model's weights (glossrec.baselines), in a `glossrec baseline` run."""
METRICS_FILE = "metrics.json"
RANKINGS_FILE = "rankings.jsonl"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"


class _Inside:
    """A read-only attribute of a RunDir: the path of one name inside it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Path:
        if obj is None:  # accessed on the class: the name itself is what there is to show
            return Path(self.name)
        return obj.path / self.name


@dataclass(frozen=True)
class RunDir:
    """A run directory: the paths of its layout, and its config read and written atomically.

    Nothing is created or checked by making one; :meth:`write_config` creates the folder.
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # ---- the layout: each a path inside the run directory --------------------------------------

    config = _Inside(CONFIG_FILE)
    manifest = _Inside(MANIFEST_FILE)
    checkpoints = _Inside(CHECKPOINTS_DIR)
    adapter = _Inside(ADAPTER_DIR)
    """Where training leaves the final weights (a LoRA adapter, or a full model)."""
    train_log = _Inside(TRAIN_LOG_FILE)
    index = _Inside(INDEX_DIR)
    """The live catalog served by `glossrec serve --run`."""
    baseline = _Inside(BASELINE_DIR)
    """A trained ID-based model (SASRec, item-kNN, popularity)."""
    metrics = _Inside(METRICS_FILE)
    rankings = _Inside(RANKINGS_FILE)
    report_md = _Inside(REPORT_MD)
    report_png = _Inside(REPORT_PNG)

    def generations(self, split: str = "test") -> Path:
        """A split's generated texts: test -> generations.jsonl, valid -> generations.valid.jsonl."""
        if split not in GENERATIONS:
            raise ConfigError(f"split must be one of {', '.join(GENERATIONS)}, got {split!r}")
        return self.path / GENERATIONS[split]

    def lis(self, retriever: str) -> RunDir:
        """The LIS baseline scored beside a full run, on the same users."""
        return RunDir(self.path / f"lis-{retriever}")

    def gloss(self, retriever: str) -> RunDir:
        """The GLoSS texts scored with a second retriever beside a full run."""
        return RunDir(self.path / f"gloss-{retriever}")

    # ---- state --------------------------------------------------------------------------------

    def is_run(self) -> bool:
        """A run directory is a folder with a config.toml."""
        return self.config.is_file()

    def trained_adapter(self) -> Path | None:
        """adapter/ once training has written a LoRA adapter there, else None."""
        return self.adapter if (self.adapter / "adapter_config.json").is_file() else None

    # ---- the config ---------------------------------------------------------------------------

    def write_config(self, cfg: RunConfig) -> Path:
        """Write `cfg` as config.toml (atomically; the folder is created)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.config) as f:
            f.write(config_to_toml(cfg))
        return self.config

    def read_config(self, overrides: dict[str, Any] | None = None, hint: str | None = None) -> RunConfig:
        """The run's config (with `overrides`, as :func:`glossrec.config.load_config` takes
        them); a folder without config.toml is a ConfigError naming it, plus `hint` (how to
        make one)."""
        if not self.is_run():
            more = f"; {hint}" if hint else ""
            raise ConfigError(f"{self.path}: not a run directory (no {CONFIG_FILE}){more}")
        return load_config(self.config, overrides)
