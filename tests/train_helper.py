"""A tiny deterministic training run, importable by tests and runnable as a subprocess.

Usage: python tests/train_helper.py MODEL_DIR RUN_DIR SLEEP_SECONDS
(the sleep after each optimizer step gives a test time to kill the process mid-run).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from glossrec.config import RunConfig
from glossrec.prompts import PromptBuilder, PromptPair

WORDS = "red blue green soft hair nail skin brush cream oil gel kit pack travel deluxe".split()


def pairs(tokenizer, n: int, seed: int = 0) -> list[PromptPair]:
    rng = random.Random(seed)
    lines = [f"Title: {' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))}"
             for _ in range(n + 3)]
    builder = PromptBuilder(tokenizer, max_length=160)
    return [builder.train_pair(lines[i:i + 3], lines[i + 3], f"u{i}") for i in range(n)]


def config(model_dir: Path, **train: object) -> RunConfig:
    base = {"batch_size": 2, "grad_accum": 2, "epochs": 2, "warmup_steps": 2, "save_steps": 2,
            "learning_rate": 5e-3, "bf16": False}
    base.update(train)
    return RunConfig.model_validate({"model": {"name": str(model_dir)}, "train": base,
                                     "prompt": {"max_length": 160}, "lora": {"r": 4, "alpha": 8}})


def main() -> None:
    import torch
    from transformers import AutoTokenizer

    from glossrec.train import train

    torch.set_num_threads(1)
    model_dir, run_dir, sleep = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    tok = AutoTokenizer.from_pretrained(model_dir)
    data = pairs(tok, 24)
    train(config(model_dir), run_dir, data[:20], data[20:],
          on_step=lambda state: time.sleep(sleep))


if __name__ == "__main__":
    main()
