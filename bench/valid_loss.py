"""Validation loss of trained weights on a training config's validation users, without training.

Recipes and stretches are compared by the loss a run records (train.valid_loss, on
train.max_valid_examples validation users drawn with train.seed); this scores other weights on
exactly those users and that loss, e.g. the shipped adapter beside a stretch's first
validation point. Nothing here looks at test users.

Run alone on an idle machine:
  .venv/bin/python bench/valid_loss.py --config configs/smollm2-beauty-wholetext.toml \
      --weights smollm2-beauty runs/smollm2-beauty-wholetext/checkpoints/step-0000100
Writes bench/results/valid_loss.json (--json) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, machine, print_columns, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="a training config (its [train] "
                   "validation settings and prompt)")
    p.add_argument("--weights", nargs="+", required=True,
                   help="shipped model names or weights folders (an adapter, a checkpoint)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--json", type=Path, default=RESULTS / "valid_loss.json")
    args = p.parse_args(argv)

    import torch

    from glossrec.config import load_config
    from glossrec.splits import prepare
    from glossrec.train import validation_loss

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    before = machine()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = load_config(args.config, overrides)
    prep = prepare(cfg)
    rows: list[dict[str, Any]] = []
    for w in args.weights:
        t0 = time.perf_counter()
        loss = validation_loss(cfg.updated(train={"init_adapter": w}), prep.dataset, prep.splits)
        rows.append({"weights": w, "valid_loss": loss, "seconds": time.perf_counter() - t0})
        print(f"{w}: {loss:.4f}", file=sys.stderr)
    print_columns(rows, [("weights", "weights", "{}"), ("validation loss", "valid_loss", "{:.4f}"),
                         ("s", "seconds", "{:.0f}")])
    write_results(args.json, {"config": str(args.config.relative_to(ROOT) if args.config.is_absolute()
                                            else args.config),
                              "overrides": overrides,
                              "valid_examples": cfg.train.max_valid_examples,
                              "valid_loss_kind": cfg.train.valid_loss, "rows": rows}, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
