from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from glossrec.config import DataConfig, EvalConfig, GenerateConfig, ModelConfig, RunConfig, config_to_toml
from glossrec.errors import ConfigError

TITLES = ["Red Lipstick", "Blue Gloss", "Shampoo 12 oz", "Hair Gel", "Face Mask", "Sunscreen SPF 30",
          "Nail Polish", "Mascara Black", "Comb Set", "Soap Bar"]


def _dataset(root: Path) -> Path:
    d = root / "data"
    d.mkdir()
    with open(d / "items.jsonl", "w") as f:
        for i, t in enumerate(TITLES):
            f.write(json.dumps({"item_id": f"i{i}", "title": t}) + "\n")
    with open(d / "sequences.jsonl", "w") as f:
        for u in range(40):
            items = [f"i{(u + j) % 10}" for j in range(3 + u % 3)]
            f.write(json.dumps({"user_id": f"user{u}", "items": items}) + "\n")
    return d


@pytest.fixture()
def run_dir(tmp_path: Path, tiny_lm_dir: Path) -> Path:
    cfg = RunConfig(data=DataConfig(path=_dataset(tmp_path)),
                    model=ModelConfig(name=str(tiny_lm_dir), load_in_4bit=False),
                    generate=GenerateConfig(max_new_tokens=6, batch_size=4),
                    evaluate=EvalConfig(users=4))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(config_to_toml(cfg))
    return run


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


def test_parallel_workers_match_one_process_and_resume_their_part_files(run_dir: Path) -> None:
    from glossrec.cli.generate import generate_run

    one = _rows(generate_run(run_dir, users=4, batch_size=1, show_progress=False))
    out = generate_run(run_dir, users=4, batch_size=1, workers=2, overwrite=True,
                       show_progress=False)
    assert _rows(out) == one  # same texts, same order, one file
    assert not list(run_dir.glob("generations.jsonl.part*"))

    # A killed parallel run: user A in the main file, user B finished by a worker whose part
    # file also ends in a torn line. Both are kept as they are; only the other two are made.
    a, b = one[0], one[1]
    fake_b = {"user_id": b["user_id"], "texts": ["kept from the part file"] * 5}
    out.write_text(json.dumps(a) + "\n")
    (run_dir / "generations.jsonl.part1").write_text(json.dumps(fake_b) + "\n" + '{"user_id": "x')
    rows = _rows(generate_run(run_dir, users=4, batch_size=1, workers=2, show_progress=False))
    assert [r["user_id"] for r in rows] == [r["user_id"] for r in one]
    assert rows[1] == fake_b and rows[0] == a and rows[2:] == one[2:]
    assert not list(run_dir.glob("generations.jsonl.part*"))


def test_workers_refused_for_vllm(run_dir: Path) -> None:
    from glossrec.cli.generate import generate_run

    text = (run_dir / "config.toml").read_text()
    gen = text.index("[generate]")
    text = text[:gen] + text[gen:].replace('backend = "hf"', 'backend = "vllm"', 1)
    (run_dir / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match="hf backend"):
        generate_run(run_dir, users=2, workers=2, show_progress=False)
