"""Fingerprints: what a stage's output depends on, in one place.

A stage's output may be reused (skipped, or resumed after a kill) only if it was made from the
same inputs. :func:`stage_inputs` says, per stage, which settings and facts those are, as a
dict whose differing keys can be named in an error; :func:`digest` turns one into a short key
for the run's manifest. Settings that do not change the output (logging cadence, batch sizes
of generation, how many steps a resumable training runs) are left out on purpose, so changing
them does not throw work away.

- ``train``: what a resumed training must share with its checkpoint (model, LoRA, loss,
  optimiser, data sizes, history length...). The step budget is not in it: a run extended to
  more steps resumes.
- ``generate``: everything that changes the generated texts (model, adapter files, decoding,
  prompt); a generations file made under other inputs is never resumed.

`glossrec run` keeps a manifest of finished stages keyed by :func:`manifest_key`: the whole
config sections a stage read, so a finished run is never silently reused under other settings.

This module sits below the stages (it imports only ``config`` and ``weights``): training, generation and the
pipeline's manifest all call it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from glossrec.config import PAPER_TEMPLATE, RunConfig
from glossrec.weights import ADAPTER_FILES

Stage = Literal["train", "generate"]



def files_sha256(folder: Path, names: tuple[str, ...] = ADAPTER_FILES) -> str:
    """sha256 over the named files of `folder` that exist, in that order."""
    h = hashlib.sha256()
    for name in names:
        f = Path(folder) / name
        if f.is_file():
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _train_inputs(cfg: RunConfig, n_train: int | None = None, n_valid: int | None = None) -> dict[str, Any]:
    t = cfg.train
    return {"model": cfg.model.name, "lora": cfg.lora.model_dump(mode="json"), "loss": t.loss,
            "batch_size": t.batch_size, "grad_accum": t.grad_accum, "seed": t.seed,
            "learning_rate": t.learning_rate, "n_train": n_train, "n_valid": n_valid,
            "method": t.method, "init_adapter": t.init_adapter, "schedule": t.schedule,
            "group_by_length": t.group_by_length,
            "max_history_items": cfg.prompt.max_history_items,
            # only when set: runs trained before the setting existed still resume
            **({"start_examples": t.start_examples} if t.start_examples else {}),
            **({"valid_loss": t.valid_loss} if t.valid_loss != "train" else {}),
            **({"head_tokens": t.head_tokens, "head_weight": t.head_weight}
               if t.weighs_heads else {}),
            **({"template": cfg.prompt.template} if cfg.prompt.template != PAPER_TEMPLATE else {})}


def _generate_inputs(cfg: RunConfig, adapter: Path | None = None) -> dict[str, Any]:
    g = cfg.generate
    gen: dict[str, Any] = {"backend": g.backend, "num_beams": g.num_beams,
                           "num_return": g.num_return, "max_new_tokens": g.max_new_tokens,
                           "bf16": g.bf16, "stop_at_newline": g.stop_at_newline}
    if g.constrain != "none":  # only then: free-text files made before these settings still resume
        gen.update(constrain=g.constrain, constrain_exclude_history=g.constrain_exclude_history,
                   grounded_score=g.grounded_score, grounded_search=g.grounded_search)
        if g.prior_weight:  # only when set: grounded files made before it still resume
            gen["prior_weight"] = g.prior_weight
        if g.grounded_score == "pmi" and g.rescore_prior_weight != 1.0:  # likewise
            gen["rescore_prior_weight"] = g.rescore_prior_weight
    return {
        "model": cfg.model.name,
        "weights": None if adapter is None else {"path": str(adapter), "sha256": files_sha256(adapter)},
        "generate": gen,
        "prompt": {"template": cfg.prompt.template, "max_length": cfg.prompt.max_length,
                   "item_format": cfg.data.item_format, "title_words": cfg.data.title_words},
    }


def prior_table_inputs(cfg: RunConfig, adapter: Path | None = None) -> dict[str, Any]:
    """What a prior table's values depend on besides the item tokens (keyed by them) and the
    empty-history prompt (the generator adds it): the model, its weights, and the precision.
    The weights by content only: the same files named by another path (relative or absolute, a
    copy) give the same values, so the table is read, not made again."""
    return {"model": cfg.model.name,
            "weights": None if adapter is None else {"sha256": files_sha256(adapter)},
            "bf16": cfg.generate.bf16}


def stage_inputs(cfg: RunConfig, stage: Stage, **facts: Any) -> dict[str, Any]:
    """What `stage`'s output depends on. facts: ``train``: n_train, n_valid (the example
    counts); ``generate``: adapter (the weights folder, hashed, or None)."""
    if stage == "train":
        return _train_inputs(cfg, **facts)
    if stage == "generate":
        return _generate_inputs(cfg, **facts)
    raise ValueError(f"no fingerprint for stage {stage!r}")


MANIFEST_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("data", "split", "prompt", "model", "lora", "train"),
    "generate": ("data", "split", "prompt", "model", "lora", "train", "generate", "evaluate"),
}
"""Config sections behind a finished stage of `glossrec run` (its manifest.json). Stricter than
stage_inputs: a finished run is redone (or refused) when any of them changes."""


LATER_SETTINGS: dict[tuple[str, str], Any] = {("generate", "prior_table"): False,
                                               ("train", "head_tokens"): 0,
                                               ("train", "head_weight"): 1.0,
                                               ("generate", "rescore_prior_weight"): 1.0}
"""Settings added after runs were made, with their defaults: left out of the manifest key
while at their default, so those runs keep their key (and are not redone or refused)."""


def manifest_key(cfg: RunConfig, stage: str) -> str:
    """The key the run manifest records for a finished stage."""
    dump = cfg.model_dump(mode="json")
    for (section, name), default in LATER_SETTINGS.items():
        if dump[section].get(name) == default:
            del dump[section][name]
    return digest({s: dump[s] for s in MANIFEST_SECTIONS[stage]})


def digest(inputs: Mapping[str, Any]) -> str:
    """A short, stable key of a fingerprint (sorted JSON, sha256, 16 hex digits)."""
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def differences(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ (all of `new`'s when there is no `old`)."""
    if old is None:
        return sorted(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
