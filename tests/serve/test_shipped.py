"""The shipped model, used by name: a run made with `index --model`, the CLI and the Python API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from glossrec.errors import ConfigError
from glossrec.rundir import shipped_config
from glossrec.weights import SHIPPED, resolve_weights

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "beauty-sample"
NAME = "smollm2-beauty"


def test_shipped_model_is_packaged_with_its_recipe_and_log() -> None:
    folder = resolve_weights(NAME)
    assert NAME in SHIPPED
    weights = folder / "adapter_model.safetensors"
    assert weights.stat().st_size <= 25 * 2**20
    info = json.loads((folder / "glossrec_train.json").read_text())
    assert info["model"] == "embedded:smollm2" and info["examples_seen_total"] > 0
    assert (folder / "train_log.jsonl").read_text().strip()
    assert "reproduce" in (folder / "README.md").read_text().lower()
    cfg_path = shipped_config(NAME)
    assert cfg_path is not None and "[generate]" in cfg_path.read_text()


def test_unknown_weights_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="smollm2-beauty"):
        resolve_weights("no-such-model")


@pytest.mark.slow
def test_recommend_with_the_shipped_model_fills_k(tmp_path: Path) -> None:
    run = tmp_path / "run"

    def glossrec(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "glossrec.cli", *args], capture_output=True,
                              text=True, timeout=900)

    made = glossrec("index", "--data", str(SAMPLE), "--out", str(run), "--model", NAME)
    assert made.returncode == 0, made.stderr
    history = ["B004756YJA", "B004ZT0SSG"]
    r = glossrec("recommend", "--run", str(run), "--history", *history, "--k", "10", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    ids = [i["item_id"] for i in out["items"]]
    assert out["mode"] == "lm" and len(ids) == 10 == len(set(ids))
    assert not set(ids) & set(history)
    # The grounded beams are catalog items outside the history, found as exact hits.
    assert out["queries"] and all(q.startswith("Title: ") for q in out["queries"])
