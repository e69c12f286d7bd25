"""Every artifact a loader reads, cut short, fails with one line naming the file.

Each case builds a small real artifact, truncates one file to half its bytes, and calls the
loader the CLI and the service use; the error must be a GlossrecError (which the CLI prints as
one line) whose message is one line and names the file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from glossrec.errors import GlossrecError

SHIPPED = Path(__file__).parents[1] / "src" / "glossrec" / "shipped" / "smollm2-beauty"
IDS, TEXTS = [f"i{n}" for n in range(6)], [f"Title: item number {n}" for n in range(6)]


def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def assert_one_line_naming(load: Callable[[], object], path: Path) -> None:
    with pytest.raises(GlossrecError) as e:
        load()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg


# ---- builders: (folder, loader) -----------------------------------------------------------

def retriever_folder(tmp: Path, kind: str) -> Callable[[], object]:
    from glossrec.retrieve import load_retriever
    from glossrec.retrieve.bm25 import BM25Retriever
    from glossrec.retrieve.dense import DenseRetriever
    from glossrec.retrieve.faiss_index import FaissRetriever

    r = BM25Retriever() if kind == "bm25" else \
        {"dense": DenseRetriever, "faiss": FaissRetriever}[kind](encoder="fake")
    r.index(IDS, TEXTS)
    r.save(tmp / "ret")
    return lambda: load_retriever(tmp / "ret")


RETRIEVER_FILES = [("bm25", "CURRENT"), ("bm25", "retriever.json"), ("bm25", "ids.json"),
                   ("bm25", "texts.json"), ("dense", "retriever.json"), ("dense", "embeddings.npy"),
                   ("faiss", "retriever.json"), ("faiss", "embeddings.npy")]


@pytest.mark.parametrize("kind,name", RETRIEVER_FILES)
def test_retriever_files(tmp_path: Path, kind: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "faiss":
        pytest.importorskip("faiss")
    from tests.retrieve.conftest import FakeEncoder

    monkeypatch.setattr("glossrec.retrieve.dense.load_encoder", lambda name, device=None: FakeEncoder())
    load = retriever_folder(tmp_path, kind)
    folder = tmp_path / "ret"
    path = folder / name if name == "CURRENT" else next(folder.glob(f"v-*/{name}"))
    cut_short(path)
    assert_one_line_naming(load, path if name != "CURRENT" else folder / "CURRENT")


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json"])
def test_shipped_model_files(tmp_path: Path, name: str) -> None:
    from glossrec.weights import resolve_weights

    folder = tmp_path / "shipped"
    shutil.copytree(SHIPPED, folder)
    cut_short(folder / name)
    assert_one_line_naming(lambda: resolve_weights(str(folder)), folder / name)


@pytest.fixture(scope="module")
def tiny_adapter(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glossrec.config import LoraConfig, ModelConfig
    from glossrec.models import apply_lora, load_model

    model, _ = load_model(ModelConfig(name=str(tiny_lm_dir), load_in_4bit=False), trainable=True)
    model = apply_lora(model, LoraConfig(r=4, alpha=8))
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(str(out), save_embedding_layers=False)
    return out


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json"])
def test_adapter_files_as_recommend_loads_them(tiny_lm_dir: Path, tiny_adapter: Path,
                                               tmp_path: Path, name: str) -> None:
    """load_model(adapter_dir=...) is what `glossrec recommend` / serve call in LM mode."""
    from glossrec.config import ModelConfig
    from glossrec.models import load_model

    folder = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, folder)
    cut_short(folder / name)
    cfg = ModelConfig(name=str(tiny_lm_dir), load_in_4bit=False)
    assert_one_line_naming(lambda: load_model(cfg, adapter_dir=folder), folder / name)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "config.json",
                                  "model.safetensors"])
def test_model_and_tokenizer_files(tiny_lm_dir: Path, tmp_path: Path, name: str) -> None:
    from glossrec.config import ModelConfig
    from glossrec.models import load_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(tiny_lm_dir, folder)
    if not (folder / name).is_file():
        pytest.skip(f"the tiny model has no {name}")
    cut_short(folder / name)
    assert_one_line_naming(lambda: load_tokenizer(ModelConfig(name=str(folder), load_in_4bit=False)),
                           folder / name)


@pytest.mark.parametrize("name", ["state.json", "optimizer.pt", "scheduler.pt", "rng.pt",
                                  "adapter_model.safetensors"])
def test_training_checkpoint_files(tiny_adapter: Path, tmp_path: Path, name: str) -> None:
    """The files Trainer.resume reads, through the readers it uses."""
    import torch

    from glossrec.io import read_json
    from glossrec.models import torch_load
    from glossrec.weights import check_model_files

    ckpt = tmp_path / "step-0000010"
    shutil.copytree(tiny_adapter, ckpt)
    for pt in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.save({"state": {0: torch.zeros(64)}, "step": 10}, ckpt / pt)
    (ckpt / "state.json").write_text(json.dumps({"step": 10}))
    cut_short(ckpt / name)

    def resume_reads() -> None:
        read_json(ckpt / "state.json")
        check_model_files(ckpt)
        for pt in ("optimizer.pt", "scheduler.pt", "rng.pt"):
            torch_load(ckpt / pt, weights_only=False)

    assert_one_line_naming(resume_reads, ckpt / name)


def test_generations_file(tmp_path: Path) -> None:
    """Cut short, a generations file is a torn write: its complete lines are read (generation
    resumes from them). Corrupt before its last line, it is a one-line error naming it."""
    from glossrec.generate.store import read_generations

    path = tmp_path / "generations.jsonl"
    lines = [json.dumps({"user_id": f"u{n}", "texts": [f"Title: t{n}"]}) for n in range(6)]
    path.write_text("\n".join(lines) + "\n")
    cut_short(path)
    assert sorted(read_generations(path)) == ["u0", "u1", "u2"]
    path.write_text("\n".join(lines[:2] + [lines[2][:20]] + lines[3:]) + "\n")
    assert_one_line_naming(lambda: read_generations(path), path)


def test_dense_embeddings_cut_short_is_not_numpy_traceback(tmp_path: Path) -> None:
    from glossrec.retrieve.store import read_array, write_array

    path = tmp_path / "a.npy"
    write_array(path, np.ones((50, 8), np.float32))
    cut_short(path)
    assert_one_line_naming(lambda: read_array(path, np.dtype(np.float32), 2), path)


def test_recommend_on_a_cut_short_adapter_prints_one_line(
        tiny_model_config: object, tiny_adapter: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`glossrec recommend --run RUN` in LM mode (the run has an adapter) whose
    adapter_model.safetensors is cut short: exit code 2 and one line naming that file."""
    from glossrec.config import load_config
    from glossrec.rundir import RunDir
    from tests.conftest import cli
    from tests.serve.conftest import write_dataset

    cfg = load_config(None, {
        "data": {"path": str(write_dataset(tmp_path / "data"))},
        "model": tiny_model_config.model_dump(mode="json", exclude_none=True),  # type: ignore[attr-defined]
        "generate": {"num_beams": 2, "num_return": 2, "max_new_tokens": 4},
        "retrieve": {"retriever": "bm25"},
    })
    run = RunDir(tmp_path / "run").write_config(cfg).parent
    shutil.copytree(tiny_adapter, run / "adapter")
    bad = run / "adapter" / "adapter_model.safetensors"
    cut_short(bad)
    code, out, err = cli(monkeypatch, capsys, "recommend", "--run", str(run), "--history", "A2", "A9")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (out, err)
    assert len(lines) == 1 and str(bad) in lines[0], err
    assert "Traceback" not in err + out
