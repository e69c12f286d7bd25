"""Validation loss of trained weights on a training config's validation users, without training.

Recipes and stretches are compared by the loss a run records (train.valid_loss, on
train.max_valid_examples validation users drawn with train.seed); this scores other weights on
exactly those users and that loss, e.g. the shipped adapter beside a stretch's first
validation point. Nothing here looks at test users.

With ``--first K`` the next item's tokens are also split: the loss of the title's first K
tokens (where the catalog still leaves most items open: the brand, the product line) against
the loss of the rest of the title and its EOS (which the catalog nearly fixes once the first
words are written), and the mean loss per title. A loss that falls only in the rest would
not change which catalog item the grounded search picks.

Run alone on an idle machine:
  .venv/bin/python bench/valid_loss.py --config configs/smollm2-beauty-wholetext.toml \
      --weights smollm2-beauty runs/smollm2-beauty-wholetext/checkpoints/step-0000100 [--first 3]
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


def split_loss(cfg: Any, weights: str, prep: Any, first: int) -> dict[str, float]:
    """Mean next-item token loss on the config's validation users, over the target's first
    `first` tokens and over the rest (title and EOS), and the summed loss per title."""
    import torch

    from glossrec.models import load_model, resolve_device
    from glossrec.prompts import PromptBuilder, make_pairs
    from glossrec.splits import sample_users
    from glossrec.train import collate, encode_pairs, first_label_tokens, token_losses
    from glossrec.train.optim import _autocast, _use_bf16
    from glossrec.weights import resolve_weights

    t, device = cfg.train, resolve_device()
    model, tok = load_model(cfg.model, adapter_dir=resolve_weights(weights), device=device)
    examples = sample_users(prep.splits.valid, t.max_valid_examples, t.seed)
    builder = PromptBuilder.from_config(tok, cfg.prompt, prep.dataset.catalog.item_format)
    data = encode_pairs(tok, make_pairs(examples, prep.dataset.catalog, builder, "train"),
                        "target", cfg.prompt.max_length)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    head = torch.zeros(2, dtype=torch.float64)  # summed loss, tokens: the first K
    rest = torch.zeros(2, dtype=torch.float64)
    order = sorted(range(len(data)), key=lambda i: len(data[i].input_ids))
    with torch.no_grad():
        for s in range(0, len(order), t.batch_size):
            batch = collate([data[i] for i in order[s:s + t.batch_size]], pad)
            with _autocast(device, _use_bf16(t, device)):
                ce = token_losses(model, batch, device)
            real = batch["labels"][:, 1:] != -100
            in_first = first_label_tokens(batch["labels"], first)
            for acc, mask in ((head, in_first), (rest, real & ~in_first)):
                acc += torch.tensor([float(ce[mask].sum()), float(mask.sum())], dtype=torch.float64)
    n = len(data)
    return {"valid_loss": float((head[0] + rest[0]) / (head[1] + rest[1])),
            "first_tokens": first, "first_loss": float(head[0] / head[1]),
            "rest_loss": float(rest[0] / rest[1]), "first_sum_per_title": float(head[0] / n),
            "rest_sum_per_title": float(rest[0] / n), "tokens_per_title": float((head[1] + rest[1]) / n)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="a training config (its [train] "
                   "validation settings and prompt)")
    p.add_argument("--weights", nargs="+", required=True,
                   help="shipped model names or weights folders (an adapter, a checkpoint)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--first", type=int, default=0, metavar="K",
                   help="also split the next item's loss: its first K tokens and the rest")
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
        if args.first:  # the same validation loss, from the same per-token losses
            row = split_loss(cfg, w, prep, args.first)
            loss = row["valid_loss"]
        else:
            loss = validation_loss(cfg.updated(train={"init_adapter": w}), prep.dataset, prep.splits)
            row = {"valid_loss": loss}
        rows.append({"weights": w, **row, "seconds": time.perf_counter() - t0})
        print(f"{w}: {loss:.4f}", file=sys.stderr)
    columns = [("weights", "weights", "{}"), ("validation loss", "valid_loss", "{:.4f}")]
    if args.first:
        columns += [(f"first {args.first} tokens", "first_loss", "{:.3f}"),
                    ("rest", "rest_loss", "{:.3f}"),
                    ("first, per title", "first_sum_per_title", "{:.2f}"),
                    ("rest, per title", "rest_sum_per_title", "{:.2f}")]
    print_columns(rows, columns + [("s", "seconds", "{:.0f}")])
    write_results(args.json, {"config": str(args.config.relative_to(ROOT) if args.config.is_absolute()
                                            else args.config),
                              "overrides": overrides,
                              "valid_examples": cfg.train.max_valid_examples,
                              "valid_loss_kind": cfg.train.valid_loss, "rows": rows}, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
