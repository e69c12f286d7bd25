"""tools/ship_model.py's model card: written from a shipped folder's files, citing only a test
result of that very model, and never touching the weights, recipe or log."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "glossrec" / "shipped" / "smollm2-beauty"
KEPT = ("adapter_model.safetensors", "adapter_config.json", "config.toml", "glossrec_train.json",
        "train_log.jsonl")


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ship_model", ROOT / "tools" / "ship_model.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _folder(tmp_path: Path) -> Path:
    """A shipped folder of two runs (3 + 2 steps of 16 examples): the real recipe and LoRA
    config, tiny stand-in weights and log."""
    f = tmp_path / "m"
    f.mkdir()
    for name in ("adapter_config.json", "config.toml"):
        shutil.copy2(SHIPPED / name, f / name)
    (f / "adapter_model.safetensors").write_bytes(b"\0" * 1024)
    (f / "glossrec_train.json").write_text(json.dumps(
        {"model": "embedded:smollm2", "steps": 2, "examples_seen": 32, "examples_seen_total": 80}))
    log = [{"run": 0, "step": s, "loss": 3.0, "lr": 1e-3, "examples": 16, "seconds": 60.0 * s}
           for s in (1, 2, 3)]
    log += [{"run": 0, "step": 3, "valid_loss": 2.5},
            {"run": 1, "step": 1, "loss": 2.0, "lr": 5e-4, "examples": 16, "seconds": 200.0},
            {"run": 1, "step": 2, "loss": 2.0, "lr": 0.0, "examples": 16, "seconds": 320.0},
            {"run": 1, "step": 2, "valid_loss": 2.25}]
    (f / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (f / "provenance.json").write_text(json.dumps(
        {"source_config": "configs/x.toml", "decode": {"prior_weight": "1.0"},
         "runs": [{"command": "cmd-run-0"}, {"command": "cmd-run-1", "paused_s": 20.0}],
         "shipped_commit": "abc1234"}))
    return f


def _test_json(tmp_path: Path, examples: int = 80) -> Path:
    row = {"users": 100, "recall@5": 0.03, "recall@5_ci95": [0.01, 0.05], "ndcg@5": 0.02,
           "ndcg@5_ci95": [0.005, 0.035], "recall@10": 0.04, "ndcg@10": 0.025}
    d = {"train": {"shipped": "m", "examples_seen": examples}, "users": 100,
         "rows": [{"run": "GLoSS-135M bm25", **row}, {"run": "LIS bm25", **row}],
         "paired": [{"retriever": "bm25", "history": "kept",
                     "recall@5": {"diff": -0.02, "diff_ci95": [-0.04, -0.001]},
                     "ndcg@5": {"diff": -0.01, "diff_ci95": [-0.02, 0.003]}},
                    {"retriever": "dense", "history": "kept",
                     "recall@5": {"diff": -0.01, "diff_ci95": [-0.03, 0.01]},
                     "ndcg@5": {"diff": 0.0, "diff_ci95": [-0.01, 0.01]}}]}
    path = tmp_path / "test.json"
    path.write_text(json.dumps(d))
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in KEPT}


def test_card_is_written_from_the_folder_and_leaves_the_model_alone(tmp_path: Path) -> None:
    tool, folder = _tool(), _folder(tmp_path)
    before = _digests(folder)
    text = tool.write_card(folder, "m", _test_json(tmp_path)).read_text()
    assert _digests(folder) == before
    # lineage: examples per run from the log, training time without the paused 20 s
    assert "| 1 | 2 | 48 -> 80 | 0.0005 -> 0 | 5.0 |" in text
    assert "| 48 | 0 | 2.500 |" in text and "| 80 | 1 | 2.250 |" in text
    # test figures with CIs, and a verdict only where the paired CI excludes 0
    assert "0.0300 [0.010, 0.050]" in text
    assert "| bm25 | kept | -0.0200 [-0.040, -0.001]" in text and "below LIS |" in text
    assert "| dense | kept | -0.0100 [-0.030, +0.010]" in text
    assert "not distinguishable from LIS" in text
    assert "Apache-2.0" in text and "McAuley" in text and "## Reproduce" in text
    assert "cmd-run-0\ncmd-run-1" in text
    assert json.loads((folder / "provenance.json").read_text())["test_json"].endswith("test.json")


def test_card_refuses_another_models_test_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool, folder = _tool(), _folder(tmp_path)
    wrong = _test_json(tmp_path, examples=64)
    with pytest.raises(SystemExit, match="test.json: scores 'm' trained on 64 examples"):
        tool.write_card(folder, "m", wrong)
    assert not (folder / "README.md").exists()


def test_the_shipped_card_cites_its_provenance() -> None:
    prov = json.loads((SHIPPED / "provenance.json").read_text())
    text = (SHIPPED / "README.md").read_text()
    assert len(prov["runs"]) == len({json.loads(x)["run"] for x in
                                     (SHIPPED / "train_log.jsonl").read_text().splitlines() if x})
    assert prov["test_json"] in text and (ROOT / prov["test_json"]).is_file()


def _git(folder: Path, *cmd: str) -> None:
    import subprocess

    subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *cmd],
                   check=True, capture_output=True)


def test_retire_keeps_the_card_and_log_and_names_the_commit_with_the_weights(tmp_path: Path) -> None:
    tool, folder = _tool(), _folder(tmp_path)
    with pytest.raises(SystemExit, match="not committed as it is"):  # not in a repository
        tool.retire(folder, "m")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "m")
    _git(tmp_path, "commit", "-qm", "ship m")
    (folder / "adapter_model.safetensors").write_bytes(b"\1" * 1024)  # changed since
    with pytest.raises(SystemExit, match="not committed as it is"):
        tool.retire(folder, "m")
    _git(tmp_path, "commit", "-qam", "ship m again")
    kept = {n: (folder / n).read_bytes() for n in KEPT if n != "adapter_model.safetensors"}
    text = tool.retire(folder, "m").read_text()
    assert not (folder / "adapter_model.safetensors").exists()
    assert {n: (folder / n).read_bytes() for n in kept} == kept
    import subprocess
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    retired = json.loads((folder / "provenance.json").read_text())["retired"]
    assert retired == {"commit": head, "weights_mb": 0.0}
    assert "weights are not in the package" in text and f"git checkout {head}" in text
    assert "| 1 | 2 | 48 -> 80 |" in text  # the lineage table is still written from the log
    with pytest.raises(SystemExit, match="retired already"):
        tool.retire(folder, "m")
