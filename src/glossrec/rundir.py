"""The run directory's layout: the one place that names its files and folders.

A run directory is the unit of work (README, "How it works"): ``config.toml`` (the resolved
config), ``manifest.json`` (finished stages), ``checkpoints/``, ``adapter/``,
``train_log.jsonl``, ``generations.jsonl`` (``generations.valid.jsonl`` for the validation
split), ``index/`` (the live catalog a service reads), ``baseline/`` (an ID-based model), ``metrics.json``, ``rankings.jsonl``,
``report.md``, ``report.png``, and for a full run the baselines in ``lis-<retriever>/`` and
``gloss-<retriever>/`` (each a run directory of its own).

This module sits below the stages: at import it needs only ``config``, ``io``, ``errors`` and
``weights``, so every stage, the pipeline, the CLI and the service may use it. Its live-catalog
helpers (:meth:`RunDir.open_catalog`, :func:`make_index_run`) import the catalog, the dataset
loader and the retriever factory when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from glossrec.config import RunConfig, config_to_toml, load_config
from glossrec.errors import ConfigError
from glossrec.io import atomic_write
from glossrec.weights import SHIPPED, kind, run_weights, shipped_dir

if TYPE_CHECKING:
    from glossrec.retrieve.live import LiveCatalog, RetrieverLoader

__all__ = [
    "RunDir", "CONFIG_FILE", "MANIFEST_FILE", "CHECKPOINTS_DIR", "ADAPTER_DIR", "TRAIN_LOG_FILE",
    "GENERATIONS", "INDEX_DIR", "BASELINE_DIR", "METRICS_FILE", "RANKINGS_FILE", "REPORT_MD", "REPORT_PNG",
    "MAKE_RUN", "make_index_run", "shipped_config",
]

CONFIG_FILE = "config.toml"
"""The resolved config. A shipped model's folder carries one under the same name."""
MANIFEST_FILE = "manifest.json"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
TRAIN_LOG_FILE = "train_log.jsonl"
PRIOR_TABLE_FILE = "prior_table.npz"
GENERATIONS = {"test": "generations.jsonl", "valid": "generations.valid.jsonl"}
"""Generated texts per split."""
INDEX_DIR = "index"
BASELINE_DIR = "baseline"
"""An ID-based model's weights (glossrec.baselines), in a `glossrec baseline` run."""
METRICS_FILE = "metrics.json"
RANKINGS_FILE = "rankings.jsonl"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
MAKE_RUN = "make one with `glossrec index --data DIR --out RUN_DIR`"
"""How a servable run directory is made (the hint of a 'not a run directory' error)."""


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
    prior_table = _Inside(PRIOR_TABLE_FILE)
    """The item prior per catalog token (generate.prior_table), kept between runs."""
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

    def trained_weights(self) -> Path | None:
        """adapter/ once training has written trained weights there (a LoRA adapter or a full
        model), else None."""
        return self.adapter if kind(self.adapter) is not None else None

    def weights(self, cfg: RunConfig) -> Path | None:
        """The trained weights this run uses: its own, else cfg's model.weights, else None (the
        base model). The one precedence rule: :func:`glossrec.weights.run_weights`."""
        return run_weights(self.trained_weights(), cfg.model.weights)

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

    # ---- the live catalog ---------------------------------------------------------------------

    def has_catalog(self) -> bool:
        """index/ holds a live catalog (made by `glossrec run`, `glossrec index` or a service)."""
        from glossrec.retrieve.live import is_live_catalog

        return is_live_catalog(self.index)

    def open_catalog(self, cfg: RunConfig | None = None,
                     loader: RetrieverLoader | None = None) -> LiveCatalog:
        """The run's live catalog; on first use it is indexed from the configured dataset.

        `cfg`: the run's config, read from config.toml when not given.
        """
        from glossrec.retrieve.live import LiveCatalog

        if self.has_catalog():
            return LiveCatalog.open(self.index, loader)
        cfg = cfg or self.read_config(hint=MAKE_RUN)
        from glossrec.data import load_data
        from glossrec.retrieve import build_retriever

        ds = load_data(cfg, where=self.config)
        return LiveCatalog.from_catalog(self.index, ds.catalog, build_retriever(cfg.retrieve),
                                        loader)


def shipped_config(name: str) -> Path | None:
    """The config a shipped model (glossrec.weights.SHIPPED) was trained and is served with: its
    folder carries one like a run directory does (None for a plain weights folder)."""
    if name not in SHIPPED:
        return None
    path = RunDir(shipped_dir(name)).config
    return path if path.is_file() else None


def make_index_run(data: str | Path, retriever: Literal["bm25", "dense"], out: str | Path,
                   config: str | Path | None = None, encoder: str | None = None,
                   weights: str | None = None, overrides: dict[str, Any] | None = None) -> Path:
    """A servable run directory from a dataset alone: config.toml + a live catalog.

    LIS mode, or with `weights` (a shipped model's name, or a weights folder) LM mode: a shipped
    model's own config (prompt and generation recipe) is the starting point unless `config` is
    given. `overrides` (load_config's, dotted keys) apply last.
    """
    rd = RunDir(Path(out))
    data = Path(data).expanduser().resolve()
    base: dict[str, Any] = {"data.path": str(data), "retrieve.retriever": retriever}
    if encoder:
        base["retrieve.encoder"] = encoder
    if weights is not None:
        base["model.weights"] = weights
        config = config if config is not None else shipped_config(weights)
    cfg = load_config(config, {**base, **(overrides or {})})
    if rd.has_catalog():
        raise ConfigError(f"{rd.path}: already has a live catalog; choose another --out or "
                          f"delete {rd.index}")
    rd.write_config(cfg)
    rd.open_catalog(cfg)
    return rd.path
