"""Config files: defaults are the paper's, overrides layer, errors are one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from glossrec.config import PAPER_TEMPLATE, RunConfig, config_to_toml, load_config
from glossrec.errors import ConfigError


def test_paper_defaults() -> None:
    c = RunConfig()
    assert (c.lora.r, c.lora.alpha, c.lora.dropout) == (16, 16, 0.0)
    assert (c.train.learning_rate, c.train.warmup_steps, c.train.batch_size, c.train.grad_accum) == (1e-4, 300, 4, 4)
    assert (c.generate.num_beams, c.generate.num_return, c.generate.max_new_tokens) == (5, 5, 50)
    assert c.retrieve.ranking == "paper" and not c.retrieve.exclude_history
    assert c.prompt.template == PAPER_TEMPLATE


def test_file_then_overrides_and_roundtrip(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[data]\npath = "data/x"\n[train]\nmax_steps = 7\n[retrieve]\nretriever = "bm25"\n')
    c = load_config(p, {"train.max_steps": 9, "evaluate": {"users": 10}})
    assert c.train.max_steps == 9 and c.evaluate.users == 10 and c.retrieve.retriever == "bm25"
    assert c.data.path == (tmp_path / "data/x").resolve()
    back = tmp_path / "back.toml"
    back.write_text(config_to_toml(c))
    assert load_config(back) == c


@pytest.mark.parametrize("body,needle", [
    ("[train]\nlearning_rat = 1\n", "train.learning_rat"),
    ("[retrieve]\nretriever = 'sparse'\n", "retrieve.retriever"),
    ("[generate]\nnum_beams = 2\nnum_return = 5\n", "num_return"),
    ("not toml = = 1", "not valid TOML"),
    # the training settings' messages say what is wrong, in pydantic's words
    ("[train]\nbatch_sise = 4\n", "train.batch_sise: Extra inputs are not permitted"),
    ("[train]\nbatch_size = 0\n", "train.batch_size: Input should be greater than or equal to 1"),
    ("[train]\noptim = \"sgd\"\n", "train.optim: Value error, unknown optimizer 'sgd'"),
    ("[train]\nloss = \"prompt\"\n", "train.loss: Input should be 'full' or 'target'"),
    ("[lora]\nr = 0\n", "lora.r: Input should be greater than or equal to 1"),
    ("[prompt]\ntemplate = \"no fields\"\n", "prompt.template: Value error, template must contain"),
])
def test_errors_name_the_file_and_key(tmp_path: Path, body: str, needle: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and needle in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_updated_copies_and_validates() -> None:
    from glossrec.config import RunConfig

    base = RunConfig()
    cfg = base.updated(train={"max_steps": 3}, retrieve={"retriever": "bm25"})
    assert (cfg.train.max_steps, cfg.retrieve.retriever) == (3, "bm25")
    assert base.train.max_steps is None and cfg.train.learning_rate == base.train.learning_rate
    with pytest.raises(ConfigError, match="train.max_stepz"):
        base.updated(train={"max_stepz": 3})


def test_base_file_merges_table_by_table(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.toml").write_text(
        'out = "runs/root"\n[data]\npath = "data/x"\n[train]\nmax_steps = 7\nlearning_rate = 3e-4\n')
    (tmp_path / "mid.toml").write_text('base = "root.toml"\n[train]\nmax_steps = 8\n')
    child = tmp_path / "sub" / "child.toml"
    child.write_text('base = "../mid.toml"\nout = "runs/child"\n[train]\nwarmup_steps = 5\n')
    c = load_config(child, {"train.warmup_steps": 6})
    # the nearest file wins key by key; untouched keys come from further down the chain
    assert (c.train.max_steps, c.train.learning_rate, c.train.warmup_steps) == (8, 3e-4, 6)
    # relative paths stay relative to the file that wrote them
    assert c.data.path == (tmp_path / "data/x").resolve()
    assert c.out == (tmp_path / "sub" / "runs/child").resolve()
    assert load_config(tmp_path / "mid.toml").out == (tmp_path / "runs/root").resolve()
    # the resolved config stands alone: written out, it has no base and loads the same
    flat = tmp_path / "flat.toml"
    flat.write_text(config_to_toml(c))
    assert not any(line.startswith("base") for line in flat.read_text().splitlines())
    assert load_config(flat) == c


def test_base_errors_name_the_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('base = "b.toml"\n')
    b.write_text('base = "a.toml"\n')
    with pytest.raises(ConfigError, match="makes a loop") as e:
        load_config(a)
    assert str(a) in str(e.value) and str(b) in str(e.value)
    a.write_text('base = "gone.toml"\n')
    with pytest.raises(ConfigError, match=r"gone\.toml: config file not found \(the base of .*a\.toml\)"):
        load_config(a)
    a.write_text("base = 3\n")
    with pytest.raises(ConfigError, match="a.toml: base: should be the path"):
        load_config(a)
    # a bad key in the base is reported with both files named
    b.write_text("[train]\nlearning_rat = 1\n")
    a.write_text('base = "b.toml"\n')
    with pytest.raises(ConfigError, match="train.learning_rat") as e:
        load_config(a)
    assert str(a) in str(e.value) and str(b) in str(e.value)


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    """Configs build on one another (`base`): a renamed or broken base fails here, not in a run."""
    cfg = load_config(path)
    # relative paths resolve against the file that wrote them, wherever the test runs from
    assert all(p is None or p.is_absolute() for p in (cfg.out, cfg.data.path))
