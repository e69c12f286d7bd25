"""ID-based baselines trained on glossrec's own split: SASRec-CE, item-kNN and popularity.

``fit_model(kind, n_items, splits, cfg)`` trains one; ``load_model(folder)`` reads one back;
:func:`glossrec.baselines.base.rank_histories` ranks the catalog for histories. The pipeline
(``glossrec baseline KIND``) scores them with the same evaluator as GLoSS and LIS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from glossrec.baselines.base import META_FILE, IdModel, rank_histories, train_sequences, validation_pairs
from glossrec.config import RunConfig
from glossrec.errors import ConfigError, DataError
from glossrec.io import read_json, write_json
from glossrec.splits import Splits

BaselineKind = Literal["sasrec", "itemknn", "pop"]
KINDS: tuple[str, ...] = ("sasrec", "itemknn", "pop")

__all__ = ["BaselineKind", "KINDS", "IdModel", "fit_model", "load_model", "save_model",
           "load_item_ids", "rank_histories", "train_sequences"]


def model_class(kind: str) -> type:
    """The class of a baseline kind (imported on demand: SASRec needs torch)."""
    if kind == "sasrec":
        from glossrec.baselines.sasrec import SASRecModel

        return SASRecModel
    if kind == "itemknn":
        from glossrec.baselines.neighbours import ItemKNN

        return ItemKNN
    if kind == "pop":
        from glossrec.baselines.neighbours import Popularity

        return Popularity
    raise ConfigError(f"unknown baseline {kind!r}; choose one of {', '.join(KINDS)}")


def new_model(kind: str, n_items: int, cfg: RunConfig) -> IdModel:
    """An untrained model with its config section ([sasrec], [itemknn]; popularity has none)."""
    return model_class(kind)(n_items, getattr(cfg, kind, None))


def fit_model(kind: str, n_items: int, splits: Splits, cfg: RunConfig) -> IdModel:
    """A model of `kind` trained on the split's training sequences (SASRec early-stops on the
    validation users)."""
    model = new_model(kind, n_items, cfg)
    model.fit(train_sequences(splits), validation_pairs(splits.valid))
    return model


ITEM_IDS_FILE = "item_ids.json"


def save_model(model: IdModel, folder: Path, item_ids: Sequence[str]) -> None:
    """The model and the item id of each of its positions (a service maps them to its live
    catalog, where positions shift)."""
    if len(item_ids) != model.n_items:
        raise ValueError(f"{len(item_ids)} item ids for a model of {model.n_items} items")
    model.save(folder)
    write_json(Path(folder) / ITEM_IDS_FILE, list(item_ids))


def load_item_ids(folder: Path) -> list[str]:
    return [str(i) for i in read_json(Path(folder) / ITEM_IDS_FILE)]


def load_model(folder: Path) -> IdModel:
    """The model saved in `folder` (its baseline.json names the kind)."""
    meta_path = Path(folder) / META_FILE
    kind = read_json(meta_path).get("kind")
    if kind not in KINDS:
        raise DataError(f"unknown baseline kind {kind!r}", meta_path)
    return model_class(kind).load(folder)
