"""Fixtures for generation tests: a tiny LM with peaked (not near-uniform) next-token scores.

A freshly initialised tiny Llama (std 0.02) scores every token almost alike, so beam search
degenerates to one repeated token and near-ties make batch-vs-single comparisons meaningless.
Re-drawing its matrices with std 0.3 gives varied, prompt-dependent texts with clear margins.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from glossrec.config import PAPER_TEMPLATE


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
