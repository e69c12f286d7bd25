"""`--json` (metrics on stdout) and `--set section.key=value` (config overrides) on the commands."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from .conftest import cli
from glossrec.cli.app import parse_sets
from glossrec.config import load_config
from glossrec.errors import ConfigError, GlossrecError
from glossrec.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "beauty-sample"


# ---- the parser ---------------------------------------------------------------------------------

def test_parse_sets_reads_toml_scalars_and_bare_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ov = parse_sets(["train.max_steps=10", "generate.constrain=catalog", "train.bf16=false",
                     "train.learning_rate=1e-4", 'retrieve.ranking="rrf"', "evaluate.cutoffs=[5, 10]",
                     "model.name=meta-llama/Llama-3.2-1B", "retrieve.encoder=123",
                     "data.item_format=Title: {title} | Brand: {brand}", "data.path=d"])
    assert ov == {"train.max_steps": 10, "generate.constrain": "catalog", "train.bf16": False,
                  "train.learning_rate": 1e-4, "retrieve.ranking": "rrf", "evaluate.cutoffs": [5, 10],
                  "model.name": "meta-llama/Llama-3.2-1B", "retrieve.encoder": "123",
                  "data.item_format": "Title: {title} | Brand: {brand}",
                  "data.path": str(tmp_path.resolve() / "d")}  # paths made absolute
    cfg = load_config(None, ov)
    assert cfg.train.max_steps == 10 and cfg.generate.constrain == "catalog" and cfg.train.bf16 is False
    assert parse_sets(None) == {} and parse_sets(["train.max_steps=1", "train.max_steps=2"]) == {"train.max_steps": 2}


@pytest.mark.parametrize(("arg", "message"), [
    ("train.max_steps=abc", "--set train.max_steps=abc: Input should be a valid integer"),
    ("train.max_steps=0", "--set train.max_steps=0: Input should be greater than or equal to 1"),
    ("train.bf16=maybe", "--set train.bf16=maybe: Input should be a valid boolean"),
    ("generate.constrain=all", "--set generate.constrain=all: Input should be 'none' or 'catalog'"),
    ("train.max_step=10", "--set train.max_step: unknown config key; did you mean train.max_steps?"),
    ("nosuch.key=1", "--set nosuch.key: unknown config key"),
    ("train=1", "--set train: unknown config key"),
    ("train.max_steps", "--set 'train.max_steps': expected SECTION.KEY=VALUE"),
])
def test_parse_sets_bad_key_or_value_names_the_key(arg: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_sets([arg])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# ---- lis / retrieve -----------------------------------------------------------------------------

def test_lis_json_and_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lis"
    code, stdout, err = cli(monkeypatch, capsys, "lis", "--data", str(SAMPLE), "--retriever", "bm25",
                            "--users", "40", "--set", "evaluate.users=25",
                            "--set", "retrieve.exclude_history=true", "--out", str(out), "--json")
    assert code == 0, err
    body = json.loads(stdout)  # stdout is the JSON alone
    assert list(body) == ["LIS-bm25"] and body["LIS-bm25"]["overall"]["users"] == 25  # --set wins
    written = json.loads((out / "metrics.json").read_text())
    assert all(written[key] == value for key, value in body["LIS-bm25"].items())
    cfg = load_config(out / "config.toml")
    assert cfg.retrieve.exclude_history is True and cfg.evaluate.users == 25


def test_lis_bad_set_is_a_one_line_error_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, stdout, err = cli(monkeypatch, capsys, "lis", "--data", str(SAMPLE), "--out", str(tmp_path / "o"),
                            "--set", "retrieve.retriever=tfidf")
    assert code == 2 and stdout == ""
    assert err.startswith("error: --set retrieve.retriever=tfidf: Input should be 'dense' or 'bm25'")
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_retrieve_json_and_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli(monkeypatch, capsys, "lis", "--data", str(SAMPLE), "--retriever", "bm25",
                       "--users", "15", "--out", str(tmp_path / "lis"))
    assert code == 0, err
    users = [json.loads(x)["user_id"] for x in (tmp_path / "lis" / "rankings.jsonl").read_text().splitlines()]
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"user_id": u, "texts": ["Title: red lipstick", "Title: shampoo"]}) + "\n"
                         for u in users))
    code, stdout, err = cli(monkeypatch, capsys, "retrieve", "--data", str(SAMPLE), "--queries", str(q),
                            "--out", str(tmp_path / "r"), "--set", "retrieve.retriever=bm25",
                            "--set", "retrieve.ranking=rrf", "--set", "retrieve.per_text_k=7", "--json")
    assert code == 0, err
    body = json.loads(stdout)
    assert list(body) == ["texts-bm25-rrf"] and body["texts-bm25-rrf"]["overall"]["users"] == 15
    assert load_config(tmp_path / "r" / "config.toml").retrieve.per_text_k == 7


# ---- run / train / generate: the config each stage receives --------------------------------------

def test_run_json_and_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    seen = {}
    metrics = {"overall": {"recall@5": 0.5, "users": 2}}

    def fake_run(cfg, out, force=False, baselines=True):
        seen["cfg"] = cfg
        return {"GLoSS-bm25": SimpleNamespace(metrics=metrics, user_ids=["u1", "u2"]),
                "LIS-bm25": SimpleNamespace(metrics=metrics, user_ids=["u1", "u2"])}

    monkeypatch.setattr("glossrec.pipeline.run", fake_run)
    config = ROOT / "configs" / "demo.toml"
    code, stdout, err = cli(monkeypatch, capsys, "run", str(config), "--data", str(SAMPLE),
                            "--out", str(tmp_path / "run"), "--max-steps", "3",
                            "--set", "train.max_steps=10", "--set", "generate.constrain=catalog",
                            "--set", "train.bf16=false", "--json")
    assert code == 0, err
    assert json.loads(stdout) == {"GLoSS-bm25": metrics, "LIS-bm25": metrics}
    cfg = seen["cfg"]
    assert cfg.train.max_steps == 10 and cfg.generate.constrain == "catalog" and cfg.train.bf16 is False
    code, stdout, err = cli(monkeypatch, capsys, "run", str(config), "--set", "train.bf16=perhaps")
    assert code == 2 and stdout == "" and err.startswith("error: --set train.bf16=perhaps:")


def test_train_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    seen = {}

    def fake_train(cfg, out):
        seen["cfg"] = cfg
        return SimpleNamespace(best_valid_loss=None, best_step=0, stopped_early=False, steps=1,
                               epochs=0.1, adapter_dir=out / "adapter")

    monkeypatch.setattr("glossrec.train.train_from_config", fake_train)
    code, _, err = cli(monkeypatch, capsys, "train", "--out", str(tmp_path / "t"), "--data", str(SAMPLE),
                       "--set", "train.max_steps=10", "--set", "lora.r=8", "--set", "train.bf16=false")
    assert code == 0, err
    assert seen["cfg"].train.max_steps == 10 and seen["cfg"].lora.r == 8
    assert load_config(tmp_path / "t" / "config.toml").lora.r == 8  # the run's config records it
    code, _, err = cli(monkeypatch, capsys, "train", "--out", str(tmp_path / "t2"), "--set", "lora.rank=8")
    assert code == 2 and err == "error: --set lora.rank: unknown config key; did you mean lora.r?\n"


def test_generate_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    RunDir(run).write_config(load_config(None, {"data.path": str(SAMPLE)}))
    seen = {}

    class Stop(GlossrecError):
        pass

    def capture(cfg, users=None):
        seen["cfg"] = cfg
        raise Stop("stopped by the test")

    monkeypatch.setattr("glossrec.splits.users_to_sample", capture)
    code, _, err = cli(monkeypatch, capsys, "generate", "--run", str(run), "--set", "generate.num_beams=3",
                       "--set", "generate.num_return=2", "--set", "generate.constrain=catalog")
    assert code == 2 and "stopped by the test" in err
    g = seen["cfg"].generate
    assert (g.num_beams, g.num_return, g.constrain) == (3, 2, "catalog")
    code, _, err = cli(monkeypatch, capsys, "generate", "--run", str(run), "--set", "generate.num_beams=x")
    assert code == 2 and err.startswith("error: --set generate.num_beams=x: Input should be a valid integer")
