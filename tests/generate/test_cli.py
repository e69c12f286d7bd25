from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from glossrec.config import ModelConfig
from glossrec.errors import ConfigError

def _add_adapter(run: Path, tiny_lm_dir: Path) -> None:
    from glossrec.config import LoraConfig
    from glossrec.models import apply_lora, load_model

    model, _ = load_model(ModelConfig(name=str(tiny_lm_dir), load_in_4bit=False), trainable=True)
    apply_lora(model, LoraConfig(r=4, alpha=4)).save_pretrained(run / "adapter")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_generates_resumes_and_guards_settings(run_dir: Path, tiny_lm_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from glossrec.cli import app
    from glossrec.cli.generate import generate_run

    _add_adapter(run_dir, tiny_lm_dir)
    res = CliRunner().invoke(app, ["generate", "--run", str(run_dir), "--users", "3",
                                   "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    rows = _rows(run_dir / "generations.jsonl")
    assert len(rows) == 3 and len({r["user_id"] for r in rows}) == 3
    assert all(len(r["texts"]) == 5 for r in rows)
    meta = json.loads((run_dir / "generations.meta.json").read_text())
    assert meta["split"] == "test" and meta["weights"]["sha256"]

    # Everything done: a rerun must not even load the model.
    import glossrec.generate.stage as g

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("model loaded although nothing was left to generate")

    monkeypatch.setattr(g, "make_generator", boom)
    assert generate_run(run_dir, users=3, show_progress=False) == run_dir / "generations.jsonl"
    monkeypatch.undo()

    # Other settings than the file was made with: refuse to mix, unless --overwrite.
    text = (run_dir / "config.toml").read_text()
    (run_dir / "config.toml").write_text(text.replace("max_new_tokens = 6", "max_new_tokens = 5"))
    with pytest.raises(ConfigError, match="overwrite"):
        generate_run(run_dir, users=3, show_progress=False)
    generate_run(run_dir, users=2, overwrite=True, show_progress=False)
    assert len(_rows(run_dir / "generations.jsonl")) == 2


def test_default_users_follow_evaluate_and_valid_split_file(run_dir: Path) -> None:
    from glossrec.cli.generate import generate_run

    out = generate_run(run_dir, split="valid", show_progress=False)
    assert out.name == "generations.valid.jsonl"
    # 5% of 40 users validate; without an adapter the base model still generates.
    assert len(_rows(out)) == 2
    assert len(_rows(generate_run(run_dir, show_progress=False))) == 4


def test_not_a_run_dir(tmp_path: Path) -> None:
    from glossrec.cli.generate import generate_run

    with pytest.raises(ConfigError, match="not a run directory"):
        generate_run(tmp_path)
