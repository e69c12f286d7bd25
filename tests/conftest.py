"""Shared fixtures: a tiny, download-free causal LM that behaves like SmolLM2 for our code paths.

The real embedded model takes seconds to load and minutes to train; these fixtures give every
test a Llama-architecture model with a real fast tokenizer (pad == eos == "<|im_end|>", like
SmolLM2) in well under a second of build time, so training/generation logic can be tested on CPU.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from glossrec.config import PAPER_TEMPLATE, ModelConfig

TINY_EOS = "<|im_end|>"
TINY_BOS = "<|im_start|>"

_WORDS = (
    "shampoo conditioner lotion cream serum mask nail polish lipstick gloss mascara eyeliner brush "
    "comb dryer straightener curling iron spray gel wax oil soap cleanser toner moisturizer "
    "sunscreen SPF 30 50 oz ml pack set kit travel size deluxe organic natural vegan fragrance "
    "free sensitive skin hair care men women kids puzzle blocks doll car truck train lego board "
    "game cards ball bike helmet glove bat racket tent lamp bottle knife & amp ; - , . ( ) / '"
).split()


def _fake_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        title = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 12)))
        lines.append(f"Title: {title}")
    return lines


def build_tiny_lm(folder: Path, hidden: int = 64, layers: int = 2, heads: int = 4,
                  intermediate: int = 128, seed: int = 0) -> Path:
    """Train a small byte-level BPE tokenizer and save a random-init Llama LM beside it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    lines = _fake_lines(400, seed)
    corpus = lines + [PAPER_TEMPLATE.format(history="\n".join(lines[i:i + 5]), target=lines[i + 5])
                      for i in range(0, 300, 6)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=[TINY_EOS, TINY_BOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=TINY_EOS, pad_token=TINY_EOS,
                                   bos_token=TINY_BOS)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)

    torch.manual_seed(seed)
    eos_id = fast.convert_tokens_to_ids(TINY_EOS)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         intermediate_size=intermediate, max_position_embeddings=2048,
                         eos_token_id=eos_id, pad_token_id=eos_id,
                         bos_token_id=fast.convert_tokens_to_ids(TINY_BOS),
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = eos_id
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama LM + fast tokenizer (pad == eos == <|im_end|>); built once per session."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm") / "model")


@pytest.fixture()
def tiny_model_config(tiny_lm_dir: Path) -> ModelConfig:
    """A ModelConfig loading the tiny LM from its local folder, full precision, HF backend."""
    return ModelConfig(name=str(tiny_lm_dir), load_in_4bit=False)


# ---- helpers shared by several test folders (import them: from ..conftest import cli) ----------


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `glossrec ARGS`, as typer's entry point runs it, in this process."""
    from glossrec.cli import main

    monkeypatch.setattr(sys, "argv", ["glossrec", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def write_tiny_dataset(folder: Path, titles: Mapping[str, str],
                       sequences: Mapping[str, Sequence[str]]) -> Path:
    """A dataset folder (items.jsonl.gz, sequences.jsonl.gz) from {id: title} and {user: [ids]}."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "items.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"item_id": i, "title": t}) + "\n" for i, t in titles.items())
    with gzip.open(folder / "sequences.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"user_id": u, "items": list(s)}) + "\n" for u, s in sequences.items())
    return folder


def toy_dataset(n_users: int = 200, seed: int = 0, n_items: int = 50, max_len: int = 12):
    """A random in-memory Dataset: users buy up to max_len distinct items of n_items, so a
    sequence names each position by its item (what the split-leakage tests rely on)."""
    import numpy as np

    from glossrec.data import Catalog, Dataset

    rng = np.random.default_rng(seed)
    cat = Catalog([f"i{j}" for j in range(n_items)], [f"item {j}" for j in range(n_items)])
    seqs = [rng.choice(n_items, size=rng.integers(1, max_len), replace=False) for _ in range(n_users)]
    return Dataset("toy", cat, [f"u{u:04d}" for u in range(n_users)], seqs)


def wait_for_checkpoint(proc, run: Path, timeout: float, tail: int = 3000) -> None:
    """Wait until training in `proc` has written a checkpoint under `run` (the moment a kill
    test kills it); fails if the process exits first or nothing appears in time."""
    import time

    from glossrec.train import latest_checkpoint

    deadline = time.time() + timeout
    while latest_checkpoint(run) is None:
        assert proc.poll() is None, proc.stderr.read().decode()[-tail:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.1)


def uint8_tensors(obj: Any) -> int:
    """uint8 tensors anywhere in a (nested) optimizer state (8-bit AdamW keeps its moments so)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return int(obj.dtype == torch.uint8)
    if isinstance(obj, dict):
        return sum(uint8_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(uint8_tensors(v) for v in obj)
    return 0
