"""Fixtures for generation tests: a tiny LM with peaked (not near-uniform) next-token scores.

A freshly initialised tiny Llama (std 0.02) scores every token almost alike, so beam search
degenerates to one repeated token and near-ties make batch-vs-single comparisons meaningless.
Re-drawing its matrices with std 0.3 gives varied, prompt-dependent texts with clear margins.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from glossrec.config import (
    PAPER_TEMPLATE, DataConfig, EvalConfig, GenerateConfig, ModelConfig, RunConfig, config_to_toml,
)


@pytest.fixture(scope="session")
def peaky_lm(tiny_lm_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3, generator=gen)
    return model.eval(), tok


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models are dominated by thread hand-offs; one thread is much faster on a busy box.
    (Tests that do not use torch do not pay for importing it.)"""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """Paper-template test prompts with 1..8 history items (so lengths differ)."""
    rng = random.Random(seed)
    words = ("shampoo lotion cream serum mask polish lipstick gloss mascara brush comb spray gel "
             "oil soap toner sunscreen SPF 30 oz pack set kit travel organic vegan fragrance").split()
    prompts = []
    for _ in range(n):
        history = ["Title: " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
                   for _ in range(rng.randint(1, 8))]
        prompts.append(PAPER_TEMPLATE.format(history="\n".join(history), target=""))
    return prompts


@pytest.fixture()
def prompts() -> list[str]:
    return make_prompts(8)


@pytest.fixture()
def prompt_maker() -> Any:
    return make_prompts


# ---- a run directory over a 10-item, 40-user dataset (generate CLI and Ray tests) ---------------

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
