"""Trained weights: their formats, how a name resolves to a folder, and which weights a run uses.

Formats. A folder of trained weights is one of:

- a LoRA adapter (``train.method = "lora"``, the paper): ``adapter_config.json`` +
  ``adapter_model.safetensors``, applied on top of ``model.name``;
- full weights (``train.method = "full"``): a whole transformers model folder, ``config.json``
  + ``model.safetensors``, loaded in place of ``model.name``.

Either may also hold ``glossrec_train.json`` (what its training did) and a tokenizer copy.
:func:`save` writes both formats and :func:`load_into` reads them back into a model of the
same shape; :func:`base_and_adapter` says what a generator loads for a folder.

Names. ``model.weights`` and ``train.init_adapter`` take the name of a model this project ships
(:data:`SHIPPED`: ``glossrec/shipped/NAME``, beside the config it was trained and is served
with, :func:`glossrec.rundir.shipped_config`) or a path to a weights folder;
:func:`resolve_weights` turns either into a folder.

Precedence, the one rule that ``glossrec generate``, ``glossrec run`` and serving apply
(:func:`run_weights`, called through :meth:`glossrec.rundir.RunDir.weights`):

1. the run's own trained weights (``RUN/adapter``, LoRA or full) once training has written them;
2. else ``model.weights``;
3. else none: the base model ``model.name`` alone.

Why the run's own weights come first: ``adapter/`` was trained for exactly this run's config,
and a run that trained must never be scored with other weights; ``model.weights`` is how a run
that does not train names the weights it uses instead. Training has its own starting point,
never ``model.weights``: the run's latest checkpoint (a resume), else ``train.init_adapter``
(:func:`check_init`), else a fresh adapter on the base model.

This module sits below the stages: it imports only ``config``, ``errors`` and ``io`` (torch and
peft inside the functions that need them), so training, generation, the run directory and
serving all call it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from glossrec.config import LoraConfig, ModelConfig
from glossrec.errors import ConfigError, DataError
from glossrec.io import read_json

__all__ = [
    "SHIPPED", "ADAPTER_FILES", "TRAIN_INFO", "Kind", "kind", "is_lora", "is_full_model",
    "resolve_weights", "shipped_dir", "ShippedModel", "shipped_models", "record_dir", "retired_checkout", "run_weights", "base_and_adapter", "lora_settings",
    "train_info", "check_init", "save", "load_into", "check_model_files", "first_line",
]

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "adapter_model.bin")
"""The files of a LoRA adapter whose bytes a generation fingerprint covers."""
FULL_CONFIG = "config.json"
FULL_WEIGHTS = "model.safetensors"
TRAIN_INFO = "glossrec_train.json"
"""What training did (steps, examples seen, seconds), written beside the weights."""

SHIPPED = MappingProxyType({
    "smollm2-beauty": "LoRA adapter of embedded:smollm2 fine-tuned on Amazon 2014 Beauty",
    "smollm2-beauty-wholetext": "smollm2-beauty continued with the whole-text loss",
    "smollm2-beauty-wholetext-2": "smollm2-beauty-wholetext trained on into its second epoch",
    "smollm2-beauty-wholetext-3": "smollm2-beauty-wholetext-2 trained on, 4,800 examples more",
    "smollm2-beauty-wholetext-4": "smollm2-beauty-wholetext-3 trained on, 4,799 examples more "
                                  "(the 5-item whole-text lineage's last)",
    "smollm2-beauty-wholetext-h20": "smollm2-beauty-wholetext-4 trained on with 20 history items "
                                    "per text",
    "smollm2-beauty-wholetext-h20-2": "smollm2-beauty-wholetext-h20 trained on, 4,800 examples more",
    "smollm2-beauty-wholetext-h20-3": "smollm2-beauty-wholetext-h20-2 trained on, 4,796 examples more",
    "smollm2-beauty-wholetext-h20-4": "smollm2-beauty-wholetext-h20-3 trained on, 4,799 examples more",
    "smollm2-beauty-wholetext-h20-5": "smollm2-beauty-wholetext-h20-4 trained on, 1,280 examples "
                                      "more (a stretch stopped at its step 80)",
    "smollm2-beauty-wholetext-h20-6": "smollm2-beauty-wholetext-h20-5 trained on, 4,800 examples more",
    "smollm2-beauty-wholetext-h20-7": "smollm2-beauty-wholetext-h20-6 trained on, 4,800 examples more",
    "smollm2-beauty-wholetext-h20-8": "smollm2-beauty-wholetext-h20-7 trained on, 4,800 examples "
                                      "more (the demo starts from it)",
    "smollm2-beauty-wholetext-h20-9": "smollm2-beauty-wholetext-h20-8 trained on, 4,796 examples more",
    "smollm2-beauty-wholetext-h20-10": "smollm2-beauty-wholetext-h20-9 trained on, 4,799 examples "
                                       "more",
    "smollm2-beauty-wholetext-h20-11": "smollm2-beauty-wholetext-h20-10 trained on, 3,200 examples "
                                       "more (a stretch's step-200 checkpoint)",
    "smollm2-beauty-wholetext-h20-12": "smollm2-beauty-wholetext-h20-11 trained on, 4,800 examples "
                                       "more",
    "smollm2-beauty-wholetext-h20-13": "smollm2-beauty-wholetext-h20-12 trained on, 4,800 examples "
                                       "more",
    "smollm2-beauty-wholetext-h20-14": "smollm2-beauty-wholetext-h20-13 trained on, 4,796 examples "
                                       "more",
    "smollm2-beauty-wholetext-h20-15": "smollm2-beauty-wholetext-h20-14 trained on, 1,600 examples "
                                       "more (a stretch's step-100 checkpoint)",
    "smollm2-beauty-wholetext-h20-16": "smollm2-beauty-wholetext-h20-15 trained on, 4,800 examples "
                                       "more",
    "smollm2-beauty-wholetext-h20-17": "smollm2-beauty-wholetext-h20-16 trained on, 1,600 examples "
                                       "more (a stretch's step-100 checkpoint)",
})
"""Models trained by this project and shipped inside the package (glossrec/shipped/NAME), with
what each is. Each keeps its card, recipe and training log there; a lineage's older models have
their weights retired from the package (``tools/ship_model.py --retire``), and
:func:`resolve_weights` then names the commit that holds them (:func:`shipped_models` says which
are in the package)."""
_SHIPPED_DIR = Path(__file__).parent / "shipped"

Kind = Literal["lora", "full"]


def kind(folder: str | Path) -> Kind | None:
    """"lora" for a LoRA adapter folder, "full" for a whole model folder, else None."""
    folder = Path(folder)
    if (folder / ADAPTER_CONFIG).is_file():
        return "lora"
    if (folder / FULL_CONFIG).is_file() and (folder / FULL_WEIGHTS).is_file():
        return "full"
    return None


def is_lora(folder: str | Path) -> bool:
    return kind(folder) == "lora"


def is_full_model(folder: str | Path) -> bool:
    """A fully fine-tuned model folder (train.method = "full"), as opposed to a LoRA adapter."""
    return kind(folder) == "full"


def shipped_dir(name: str) -> Path:
    """The package folder of a shipped model: its card, recipe, training log and provenance,
    and its weights unless they were retired (:func:`resolve_weights` checks that)."""
    if name not in SHIPPED:
        raise ConfigError(f"{name!r} is not a shipped model (known: {', '.join(sorted(SHIPPED))})")
    return _SHIPPED_DIR / name


def record_dir(spec: str | Path) -> Path:
    """The folder of a model's record (training info and log, and for a shipped model its card
    and recipe): a shipped model's package folder, whose weights may be retired, else the
    weights folder `spec` names (:func:`resolve_weights`)."""
    if isinstance(spec, str) and spec in SHIPPED:
        return shipped_dir(spec)
    return resolve_weights(spec)


def retired_checkout(name: str, commit: str) -> str:
    """The command that brings a retired shipped model's weights back, in a clone of the
    glossrec repository."""
    return f"git checkout {commit} -- src/glossrec/shipped/{name}/{ADAPTER_WEIGHTS}"


def resolve_weights(spec: str | Path) -> Path:
    """A trained-weights folder: a shipped model's name, or a path to a LoRA adapter folder
    (adapter_config.json) or a fully fine-tuned model folder (config.json)."""
    if isinstance(spec, str) and spec in SHIPPED:
        folder = shipped_dir(spec)
        if _weights_retired(folder):
            raise ConfigError(_retired(spec, folder))
        if kind(folder) is None:
            raise ConfigError(f"shipped model {spec!r}: {folder} is missing from this install")
        check_model_files(folder)
        return folder
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        known = ", ".join(sorted(SHIPPED))
        raise ConfigError(f"{folder}: no such weights folder (or shipped model; known: {known})")
    if kind(folder) is None:
        raise ConfigError(f"{folder}: neither a LoRA adapter ({ADAPTER_CONFIG}) nor a model "
                          f"folder ({FULL_CONFIG} + {FULL_WEIGHTS})")
    check_model_files(folder)
    return folder


def _retired(name: str, folder: Path) -> str:
    """Why a shipped model has no weights here: the package keeps every shipped model's card,
    recipe and training log, but the weights only of the newest of each lineage and of a model
    the demo starts from (a wheel holds each one whole); the others stay in the project's git
    history."""
    commit = _retired_commit(folder)
    where = (f"`{retired_checkout(name, commit)}` in a clone of the glossrec repository"
             if commit else "the glossrec repository's history")
    return (f"shipped model {name!r}: its weights are not in the package (retired; its card, "
            f"recipe and training log are in {folder}); get them with {where}")


def _weights_retired(folder: Path) -> bool:
    """A shipped LoRA folder whose weights left the package (its config and card stay)."""
    return kind(folder) == "lora" and not (folder / ADAPTER_WEIGHTS).is_file()


def _retired_commit(folder: Path) -> str | None:
    """The commit that holds a retired shipped model's weights (its provenance records it)."""
    provenance = folder / "provenance.json"
    return (read_json(provenance).get("retired") or {}).get("commit") if provenance.is_file() else None


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model as a user chooses among them: what it is, whether its weights are in
    this install, and what its training did (its ``glossrec_train.json``)."""

    name: str
    description: str
    folder: Path
    in_package: bool
    retired_commit: str | None
    init: str | None
    examples: int | None
    train_hours: float | None
    best_valid_loss: float | None


def shipped_models() -> list[ShippedModel]:
    """Every shipped model, in :data:`SHIPPED`'s order (each lineage oldest first). Whether its
    weights are here is read from its folder, not written by hand."""
    models = []
    for name, description in SHIPPED.items():
        folder = shipped_dir(name)
        info = train_info(folder)
        seconds = info.get("train_seconds_total")
        in_package = kind(folder) is not None and not _weights_retired(folder)
        models.append(ShippedModel(
            name=name, description=description, folder=folder, in_package=in_package,
            retired_commit=None if in_package else _retired_commit(folder),
            init=info.get("init_adapter"),
            examples=info.get("examples_seen_total"),
            train_hours=None if seconds is None else seconds / 3600,
            best_valid_loss=info.get("best_valid_loss")))
    return models


def check_model_files(folder: Path) -> None:
    """Every JSON and safetensors file of a model, adapter or tokenizer folder reads: one cut
    short or corrupt is a DataError naming it, before a library fails on it with a traceback.
    Cheap: safetensors files are checked by their header and size, not read."""
    from safetensors import safe_open

    from glossrec.io import read_json

    for path in sorted(Path(folder).glob("*.json")):
        read_json(path)
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="np") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own SafetensorError (or OSError)
            raise DataError(f"not a readable safetensors file, cut short or corrupt "
                            f"({first_line(e)})", path) from None


def first_line(e: BaseException) -> str:
    """A library exception's message, first line only (for a one-line error)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__



def run_weights(own: Path | None, configured: str | None) -> Path | None:
    """The precedence rule (module docstring): the trained weights a run uses.

    own: the run's adapter/ folder (None, or a folder without trained weights, when it has not
    trained); configured: model.weights. None means the base model alone.
    """
    if own is not None and kind(own) is not None:
        return Path(own)
    if configured is not None:
        return resolve_weights(configured)
    return None


def base_and_adapter(model: ModelConfig, weights: Path | None) -> tuple[ModelConfig, Path | None]:
    """What to load for `weights`: (the model, the LoRA adapter to put on it or None).

    Full weights replace the base model; a LoRA adapter rides on ``model.name``.
    """
    if weights is None:
        return model, None
    found = kind(weights)
    if found == "full":
        return model.model_copy(update={"name": str(weights)}), None
    if found is None:
        raise ConfigError(f"{weights}: not a LoRA adapter folder (no {ADAPTER_CONFIG}) nor a "
                          f"model folder ({FULL_CONFIG} + {FULL_WEIGHTS})")
    return model, Path(weights)


def lora_settings(folder: Path) -> dict[str, Any]:
    """A LoRA adapter's adapter_config.json (rank, alpha, target modules...)."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise ConfigError(f"{folder}: not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    settings = read_json(path)
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: not a valid adapter config")
    return settings


def train_info(folder: Path) -> dict[str, Any]:
    """The glossrec_train.json beside trained weights ({} when there is none)."""
    path = Path(folder) / TRAIN_INFO
    return read_json(path) if path.is_file() else {}


def check_init(spec: str, method: str, lora: LoraConfig) -> Path:
    """train.init_adapter resolved, and checked to fit a model trained by `method`: a LoRA
    adapter with these [lora] settings, or full weights for train.method = "full"."""
    folder = resolve_weights(spec)
    if method == "lora":
        saved = lora_settings(folder) if is_lora(folder) else None
        if saved is None or saved.get("r") != lora.r or saved.get("lora_alpha") != lora.alpha \
                or set(saved.get("target_modules") or []) != set(lora.target_modules):
            raise ConfigError(f"train.init_adapter: {folder} is not a LoRA adapter with this "
                              f"run's [lora] settings (r={lora.r}, alpha={lora.alpha}, "
                              f"target_modules={lora.target_modules})")
    elif not (folder / FULL_WEIGHTS).is_file():
        raise ConfigError(f"train.init_adapter: {folder} holds no full model weights "
                          f'({FULL_WEIGHTS}), which train.method = "full" needs')
    return folder


def save(model: Any, folder: Path, base_name: str) -> None:
    """The trained weights of `model`: a LoRA adapter (a peft model), or the whole model."""
    if not hasattr(model, "peft_config"):
        model.save_pretrained(str(folder))
        return
    for cfg in model.peft_config.values():
        cfg.base_model_name_or_path = base_name  # portable: the spec, not a cache path
    # LoRA never touches the embeddings; "auto" would look for the base config by that name.
    model.save_pretrained(str(folder), save_embedding_layers=False)


def load_into(model: Any, folder: Path, device: str) -> None:
    """Load weights written by :func:`save` into `model` (same method, same shapes); a file cut
    short or corrupt is a one-line error naming it."""
    from safetensors.torch import load_file

    check_model_files(Path(folder))
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(Path(folder) / ADAPTER_WEIGHTS),
                                                   device=device))
        return
    state = load_file(str(Path(folder) / FULL_WEIGHTS), device=device)
    result = model.load_state_dict(state, strict=False)
    # Tied output embeddings are saved once, under the input embeddings' name.
    missing = [k for k in result.missing_keys if not k.endswith("lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ConfigError(f"{folder}: weights do not fit this model (missing {missing[:3]}, "
                          f"unexpected {result.unexpected_keys[:3]})")
