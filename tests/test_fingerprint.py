"""Manifest keys: settings added later leave the keys of runs made before them unchanged; a
prior table's key follows the weights' content."""

from __future__ import annotations

import shutil
from pathlib import Path

from glossrec.config import RunConfig
from glossrec.fingerprint import (
    LATER_SETTINGS, MANIFEST_SECTIONS, digest, manifest_key, prior_table_inputs,
)


def test_a_later_setting_at_its_default_keeps_the_old_key() -> None:
    cfg = RunConfig()
    dump = cfg.model_dump(mode="json")
    for section, name in LATER_SETTINGS:  # the dump a run made before the setting recorded
        del dump[section][name]
    old = digest({s: dump[s] for s in MANIFEST_SECTIONS["generate"]})
    assert manifest_key(cfg, "generate") == old
    assert manifest_key(cfg, "train") == digest({s: dump[s] for s in MANIFEST_SECTIONS["train"]})
    # Set away from its default, it is part of the key.
    on = cfg.updated(generate={"constrain": "catalog", "prior_weight": 1.0, "prior_table": True})
    off = cfg.updated(generate={"constrain": "catalog", "prior_weight": 1.0})
    assert manifest_key(on, "generate") != manifest_key(off, "generate")
    heads = cfg.updated(train={"head_tokens": 3, "head_weight": 4.0})
    assert manifest_key(heads, "train") != manifest_key(cfg, "train")


def test_a_training_resumes_only_under_its_head_weight() -> None:
    from glossrec.fingerprint import stage_inputs

    cfg = RunConfig()
    assert stage_inputs(cfg, "train") == stage_inputs(cfg.updated(train={"head_tokens": 3}), "train")
    heads = stage_inputs(cfg.updated(train={"head_tokens": 3, "head_weight": 4.0}), "train")
    assert heads != stage_inputs(cfg, "train") and heads["head_weight"] == 4.0


def test_generations_resume_only_under_their_rescore_weight() -> None:
    from glossrec.fingerprint import stage_inputs

    pmi = RunConfig().updated(generate={"constrain": "catalog", "grounded_score": "pmi"})
    before = stage_inputs(pmi, "generate")  # files made before the setting keep their key
    assert "rescore_prior_weight" not in before["generate"]
    half = stage_inputs(pmi.updated(generate={"rescore_prior_weight": 0.5}), "generate")
    assert half != before and half["generate"]["rescore_prior_weight"] == 0.5
    beam = RunConfig().updated(generate={"constrain": "catalog", "rescore_prior_weight": 0.5})
    assert stage_inputs(beam, "generate") == stage_inputs(
        RunConfig().updated(generate={"constrain": "catalog"}), "generate")  # unused: no change


def test_a_prior_tables_key_names_the_weights_by_content_not_by_path(tmp_path: Path) -> None:
    """The same adapter files under another path (a copy, a relative spelling) key the same
    table; other files do not."""
    a = tmp_path / "a"
    a.mkdir()
    (a / "adapter_model.safetensors").write_bytes(b"weights")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    cfg = RunConfig()
    assert prior_table_inputs(cfg, a) == prior_table_inputs(cfg, b)
    (b / "adapter_model.safetensors").write_bytes(b"other weights")
    assert prior_table_inputs(cfg, a) != prior_table_inputs(cfg, b)
    assert prior_table_inputs(cfg, None)["weights"] is None
