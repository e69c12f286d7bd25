"""Trained weights: one precedence rule (the run's own, then model.weights, then the base model)
that `glossrec generate`, `glossrec run` and the recommender apply alike, full weights included.

The model itself is never loaded here: each entry point's generator factory (or generation
stage) is replaced by a recorder of the weights folder it was handed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from glossrec.config import LoraConfig, load_config
from glossrec.errors import ConfigError
from glossrec.rundir import RunDir
from glossrec.weights import base_and_adapter, check_init, kind, resolve_weights, run_weights

from .conftest import cli, write_tiny_dataset

TITLES = {f"i{j}": f"{w} {c}" for j, (w, c) in enumerate(
    (w, c) for w in ("red", "blue", "green", "soft") for c in ("brush", "cream", "gel"))}
SEQUENCES = {f"u{u}": [f"i{(u + s) % len(TITLES)}" for s in range(4)] for u in range(10)}


def _lora(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"r": 4, "lora_alpha": 8, "target_modules": LoraConfig().target_modules}))
    return folder


def _full(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    from safetensors.numpy import save_file  # a readable file: resolving checks the header

    save_file({"w": np.zeros(1, dtype=np.float32)}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture()
def run(tmp_path: Path, tiny_lm_dir: Path) -> RunDir:
    """A run directory with a config over a tiny dataset and the tiny LM; no weights yet."""
    data = write_tiny_dataset(tmp_path / "data", TITLES, SEQUENCES)
    rd = RunDir(tmp_path / "run")
    rd.write_config(load_config(None, {"data.path": str(data), "model.name": str(tiny_lm_dir),
                                       "generate.num_beams": 2, "generate.num_return": 2}))
    return rd


def _name_weights(rd: RunDir, weights: Path | None) -> None:
    text = rd.config.read_text()
    rd.config.write_text(text.replace("[model]\n", f'[model]\nweights = "{weights}"\n', 1))
    assert rd.read_config().model.weights == str(weights)


class _Recorder:
    """A generator factory that records the weights it is given and returns a fake model."""

    def __init__(self) -> None:
        self.weights: list[Path | None] = []

    def __call__(self, cfg: Any, adapter_dir: Path | None, catalog: Any = None,
                 prior_table_file: Path | None = None) -> Any:
        self.weights.append(adapter_dir)
        return self

    tokenizer = None

    def generate(self, prompts: list[str], exclude: Any = None) -> list[list[str]]:
        return [["Title: red brush", "Title: blue gel"] for _ in prompts]


# ---- the rule itself ---------------------------------------------------------------------------


def test_formats_and_the_rule(tmp_path: Path) -> None:
    own, full, other = tmp_path / "own", _full(tmp_path / "full"), _lora(tmp_path / "other")
    assert kind(other) == "lora" and kind(full) == "full" and kind(tmp_path) is None
    assert run_weights(None, None) is None
    own.mkdir()  # an adapter/ folder without weights in it: no training finished there
    assert run_weights(own, None) is None
    assert run_weights(own, str(other)) == other
    (own / "adapter_config.json").write_text("{}")
    assert run_weights(own, str(other)) == own
    assert run_weights(full, str(other)) == full
    with pytest.raises(ConfigError, match="neither a LoRA adapter"):
        resolve_weights(tmp_path)
    with pytest.raises(ConfigError, match="no such weights folder"):
        run_weights(None, str(tmp_path / "missing"))


def test_a_retired_shipped_model_says_where_its_weights_are(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    import glossrec.weights as w

    folder = _lora(tmp_path / "smollm2-beauty")
    save_file({"a": np.zeros(2, dtype=np.float32)}, str(folder / w.ADAPTER_WEIGHTS))
    monkeypatch.setattr(w, "_SHIPPED_DIR", tmp_path)
    assert resolve_weights("smollm2-beauty") == folder
    (folder / w.ADAPTER_WEIGHTS).unlink()
    (folder / "provenance.json").write_text(json.dumps({"retired": {"commit": "abc123"}}))
    with pytest.raises(ConfigError, match="not in the package.*git checkout abc123 -- "
                       "src/glossrec/shipped/smollm2-beauty/adapter_model.safetensors"):
        resolve_weights("smollm2-beauty")
    assert w.shipped_dir("smollm2-beauty") == folder  # its card, recipe and log are still read
    with pytest.raises(ConfigError, match="not a shipped model"):
        w.shipped_dir("no-such-model")


def test_the_models_listing_reads_which_weights_are_in_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from safetensors.numpy import save_file

    import glossrec.weights as w

    here, gone = _lora(tmp_path / "m-new"), _lora(tmp_path / "m-old")
    save_file({"a": np.zeros(2, dtype=np.float32)}, str(here / w.ADAPTER_WEIGHTS))
    (here / w.TRAIN_INFO).write_text(json.dumps({"examples_seen_total": 4800, "init_adapter": "m-old",
                                                 "train_seconds_total": 7200.0}))
    (gone / "provenance.json").write_text(json.dumps({"retired": {"commit": "f" * 40}}))
    monkeypatch.setattr(w, "_SHIPPED_DIR", tmp_path)
    monkeypatch.setattr(w, "SHIPPED", {"m-old": "the first", "m-new": "m-old trained on"})
    old, new = w.shipped_models()
    assert (old.name, old.in_package, old.retired_commit, old.examples) == ("m-old", False, "f" * 40, None)
    assert (new.in_package, new.retired_commit, new.init, new.examples, new.train_hours) == \
        (True, None, "m-old", 4800, 2.0)
    code, out, _ = cli(monkeypatch, capsys, "models")
    assert code == 0
    assert re.search(r"m-old +retired \(fffffff\) .*the first", out)
    assert re.search(r"m-new +here +4,800 +2\.0 +m-old trained on", out)
    code, out, _ = cli(monkeypatch, capsys, "models", "--json")
    assert [json.loads(line)["in_package"] for line in out.splitlines()] == [False, True]


def test_full_weights_replace_the_base_model(tmp_path: Path, tiny_model_config: Any) -> None:
    full, lora = _full(tmp_path / "full"), _lora(tmp_path / "lora")
    model, adapter = base_and_adapter(tiny_model_config, full)
    assert model.name == str(full) and adapter is None
    assert base_and_adapter(tiny_model_config, lora) == (tiny_model_config, lora)
    assert base_and_adapter(tiny_model_config, None) == (tiny_model_config, None)
    with pytest.raises(ConfigError, match="not a LoRA adapter folder"):
        base_and_adapter(tiny_model_config, tmp_path)


def test_init_must_fit_the_training_method(tmp_path: Path) -> None:
    full, lora = _full(tmp_path / "full"), _lora(tmp_path / "lora")
    assert check_init(str(lora), "lora", LoraConfig(r=4, alpha=8)) == lora
    assert check_init(str(full), "full", LoraConfig()) == full
    with pytest.raises(ConfigError, match="not a LoRA adapter with this run's"):
        check_init(str(full), "lora", LoraConfig(r=4, alpha=8))
    with pytest.raises(ConfigError, match="holds no full model weights"):
        check_init(str(lora), "full", LoraConfig())


# ---- each entry point --------------------------------------------------------------------------


def _generate(rd: RunDir, monkeypatch: pytest.MonkeyPatch) -> Path | None:
    import glossrec.generate.stage as stage
    from glossrec.cli.generate import generate_run

    rec = _Recorder()
    monkeypatch.setattr(stage, "make_generator", rec)
    generate_run(rd.path, users=3, overwrite=True, show_progress=False)
    assert len(rec.weights) == 1
    return rec.weights[0]


def test_generate_uses_full_weights_and_model_weights(run: RunDir, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    assert _generate(run, monkeypatch) is None  # nothing trained, nothing named: the base model
    assert "generating with the base model" in capsys.readouterr().err
    named = _lora(tmp_path / "named")
    _name_weights(run, named)
    assert _generate(run, monkeypatch) == named  # no weights of its own: model.weights
    _full(run.adapter)
    assert _generate(run, monkeypatch) == run.adapter  # its own full weights come first
    assert "base model" not in capsys.readouterr().err


def test_run_uses_its_own_weights_before_model_weights(run: RunDir, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import glossrec.generate
    from glossrec.pipeline import run as run_pipeline

    seen: list[Path | None] = []
    monkeypatch.setattr(glossrec.generate, "generate_examples",
                        lambda cfg, examples, catalog, weights, *a, **k: seen.append(weights))
    named = _lora(tmp_path / "named")
    _name_weights(run, named)
    cfg = run.read_config()
    run_pipeline(cfg, run.path, score=False)  # no training: model.weights names the weights
    _full(run.adapter)
    run_pipeline(cfg, run.path, score=False)
    assert seen == [named, run.adapter]


def test_recommender_uses_the_same_rule(run: RunDir, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import glossrec.generate
    from glossrec.serve import Recommender

    rec = _Recorder()
    monkeypatch.setattr(glossrec.generate, "make_generator", rec)
    assert Recommender.from_run(run.path).mode == "lis"  # no weights at all: LIS
    named = _lora(tmp_path / "named")
    _name_weights(run, named)
    lm = Recommender.from_run(run.path)
    assert lm.mode == "lm" and rec.weights == [named]
    assert [i.item_id for i in lm.recommend(["i0", "i1"], k=3).items]
    _full(run.adapter)
    Recommender.from_run(run.path)
    assert rec.weights == [named, run.adapter]


def test_every_shipped_model_has_its_card_and_log_and_weights_or_their_commit() -> None:
    import glossrec.weights as w

    for name in w.SHIPPED:
        folder = w.shipped_dir(name)
        assert all((folder / f).is_file() for f in ("README.md", "config.toml", "train_log.jsonl",
                                                    "provenance.json", w.TRAIN_INFO)), name
        if (folder / w.ADAPTER_WEIGHTS).is_file():
            assert resolve_weights(name) == folder
        else:
            with pytest.raises(ConfigError, match=r"git checkout [0-9a-f]{40} -- "):
                resolve_weights(name)
            commit = re.search(r"[0-9a-f]{40}", (folder / "README.md").read_text())
            assert commit is not None, f"{name}: its card names no commit with the weights"
