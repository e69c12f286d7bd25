"""The paper's recipe end to end on CPU: 4-bit NF4 QLoRA (r 16, alpha 16, all seven projections,
8-bit AdamW) through `glossrec run` with a paper config, only the model swapped for a tiny
random Llama and the data for a tiny dataset.

bitsandbytes' CPU backend (glossrec.models.BNB_CPU_FLOORS) runs the same Linear4bit layers and
optimizer a GPU user gets, so the path every GPU user takes is exercised without a GPU. Every
model the run loads is checked to hold 4-bit layers, so a run that silently fell back to full
precision fails here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from glossrec.config import LoraConfig
from glossrec.models import bitsandbytes_missing
from glossrec.train import latest_checkpoint

from .conftest import _WORDS, build_tiny_lm, cli, uint8_tensors, write_tiny_dataset
from .retrieve.conftest import FakeEncoder

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper" / "llama-1b-beauty.toml"
KILL_HELPER = Path(__file__).with_name("kill_helper.py")
LAYERS = 1
PROJECTIONS = 7 * LAYERS

_MISSING = bitsandbytes_missing("4bit", "cpu") or bitsandbytes_missing("adamw_8bit", "cpu")
pytestmark = pytest.mark.skipif(_MISSING is not None,
                                reason=f"{_MISSING} (the test extra installs it)")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # hidden 256: rank-16 LoRA matrices of 4,096 values, the size from which bitsandbytes keeps
    # 8-bit optimizer state (smaller tensors get 32-bit state, and 8-bit would go untested).
    return build_tiny_lm(tmp_path_factory.mktemp("llama") / "model", hidden=256, layers=LAYERS,
                         intermediate=512)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    titles = {f"i{j}": " ".join(rng.choice(_WORDS[:60]) for _ in range(rng.randint(2, 4)))
              for j in range(30)}
    users = {f"u{u:02d}": rng.sample(sorted(titles), rng.randint(4, 6)) for u in range(24)}
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", titles, users)


def _layers(model: Any) -> dict[str, int]:
    """How many Linear4bit layers the model holds, and how many full-precision linear layers
    outside the LoRA matrices and the output head (0 in a 4-bit model)."""
    import bitsandbytes as bnb

    found = {"linear4bit": 0, "full_precision": 0, "lora_over_4bit": 0}
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, bnb.nn.Linear4bit):
            found["linear4bit"] += 1
        elif isinstance(mod, torch.nn.Linear) and leaf != "lm_head" and ".lora_" not in name:
            found["full_precision"] += 1
        if isinstance(getattr(mod, "base_layer", None), bnb.nn.Linear4bit):
            found["lora_over_4bit"] += 1
    return found


@pytest.fixture()
def loads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What every glossrec.models.load_model call of the test returned (layer counts)."""
    import glossrec.models

    seen: list[dict[str, Any]] = []
    real: Callable[..., tuple[Any, Any]] = glossrec.models.load_model

    def spy(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        model, tok = real(*args, **kwargs)
        seen.append({"trainable": kwargs.get("trainable", False),
                     "adapter": kwargs.get("adapter_dir"), **_layers(model)})
        return model, tok

    monkeypatch.setattr(glossrec.models, "load_model", spy)
    return seen


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_paper_qlora_recipe_trains_resumes_generates_and_scores_on_cpu(
        llama_dir: Path, dataset: Path, tmp_path: Path, loads: list[dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("glossrec.retrieve.dense.load_encoder",
                        lambda name, device=None: FakeEncoder())  # the paper's e5, download-free
    sets = {"model.name": str(llama_dir), "model.load_in_4bit": "true",
            "train.max_steps": 3, "train.save_steps": 1, "train.warmup_steps": 1,
            "train.batch_size": 2, "train.grad_accum": 1, "train.max_examples": 6,
            "train.max_valid_examples": 2, "generate.num_beams": 2, "generate.num_return": 2,
            "generate.max_new_tokens": 8, "generate.constrain": "catalog", "evaluate.users": 2}
    args = ["run", str(PAPER), "--data", str(dataset), "--no-baselines"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]

    # The reference: one uninterrupted 4-bit QLoRA run, grounded generation, dense retrieval.
    ref = tmp_path / "ref"
    code, out, err = cli(monkeypatch, capsys, *args, "--out", str(ref))
    assert code == 0, err[-2000:]
    resolved = tomllib.loads((ref / "config.toml").read_text())  # the paper's recipe, as run
    assert resolved["lora"] == {**resolved["lora"], "r": 16, "alpha": 16,
                                "target_modules": LoraConfig().target_modules}
    assert len(resolved["lora"]["target_modules"]) == 7
    assert resolved["train"]["learning_rate"] == 1e-4 and "optim" not in resolved["train"]
    train_load, gen_load = loads
    assert train_load["trainable"] and gen_load["adapter"] == ref / "adapter"
    for load in loads:  # both stages ran on 4-bit weights, none replaced by full precision
        assert load["linear4bit"] == PROJECTIONS and load["full_precision"] == 0, load
    assert gen_load["lora_over_4bit"] == PROJECTIONS  # the saved adapter, over the 4-bit base
    adapter = load_file(str(ref / "adapter" / "adapter_model.safetensors"))
    assert len([k for k in adapter if "lora_B" in k]) == PROJECTIONS
    assert any(bool(v.abs().sum()) for k, v in adapter.items() if "lora_B" in k)  # it trained

    # Grounded: every text is a catalog item; then retrieval and evaluation.
    catalog = {f"Title: {json.loads(x)['title']}" for x in _catalog_lines(dataset)}
    generated = _rows(ref / "generations.jsonl")
    assert len(generated) == 2
    assert all(t in catalog for row in generated for t in row["texts"]), generated
    metrics = json.loads((ref / "metrics.json").read_text())
    assert metrics["overall"]["users"] == 2

    # A kill after the checkpoint of step 2, in its own process, then `glossrec run` again.
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, str(KILL_HELPER), "2", *args, "--out", str(killed)],
                          env=dict(os.environ), capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert latest_checkpoint(killed).name == "step-0000002" and not (killed / "adapter").exists()
    # The paper's optimizer: 8-bit AdamW, whose saved moments are uint8 (torch AdamW's: float32).
    state = torch.load(latest_checkpoint(killed) / "optimizer.pt", weights_only=False)["state"]
    assert uint8_tensors(state) >= 2 * PROJECTIONS
    loads.clear()
    code, out, err = cli(monkeypatch, capsys, *args, "--out", str(killed))
    assert code == 0, err[-2000:]
    assert all(load["linear4bit"] == PROJECTIONS for load in loads)
    resumed, reference = _rows(killed / "train_log.jsonl"), _rows(ref / "train_log.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in reference] == [1, 2, 3, 3]
    for a, b in zip(resumed, reference):  # the same curve
        for key in ("loss", "valid_loss", "lr"):
            assert (key in a) == (key in b)
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-8), (key, a, b)
    resumed_adapter = load_file(str(killed / "adapter" / "adapter_model.safetensors"))
    for k, v in adapter.items():
        assert torch.allclose(v, resumed_adapter[k], atol=1e-6), k
    assert _rows(killed / "generations.jsonl") == generated

    # Free generation: the saved adapter loaded again over the 4-bit base, nothing trained.
    loads.clear()
    free = tmp_path / "free"
    code, out, err = cli(monkeypatch, capsys, *args, "--out", str(free),
                         "--set", f"model.weights={ref / 'adapter'}",
                         "--set", "generate.constrain=none")
    assert code == 0, err[-2000:]
    assert not (free / "adapter").exists() and len(loads) == 1
    assert loads[0]["lora_over_4bit"] == PROJECTIONS and loads[0]["full_precision"] == 0
    texts = [t for row in _rows(free / "generations.jsonl") for t in row["texts"]]
    assert len(texts) == 4 and all(t.strip() for t in texts)
    assert json.loads((free / "metrics.json").read_text())["overall"]["users"] == 2


def _catalog_lines(folder: Path) -> list[str]:
    import gzip

    with gzip.open(folder / "items.jsonl.gz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()
