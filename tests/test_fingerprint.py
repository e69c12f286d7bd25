"""Manifest keys: settings added later leave the keys of runs made before them unchanged."""

from __future__ import annotations

from glossrec.config import RunConfig
from glossrec.fingerprint import LATER_SETTINGS, MANIFEST_SECTIONS, digest, manifest_key


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
