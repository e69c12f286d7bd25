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

With ``--split valid train`` each weights is also scored on as many training texts (their last
item, a target every epoch has trained on): where the training texts' loss keeps falling and the
validation users' does not, the weights memorise rather than generalise.

With ``--baseline`` (needs ``--first K``) two models without an LM score the K-th label token
of the same texts (with the paper's item format, the title's first token): its frequency among
all training targets, and that mixed with the history's own K-th tokens,
``p(t) = (1 - lam) * freq(t) + lam * share of the history items whose K-th token is t``, lam
chosen on the training texts. They are the floor the LM's choice of an item has to clear.

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


def losses_row(losses: Any) -> dict[str, float]:
    """A table row of one weights' validation losses (a `glossrec.train.ValidLosses`)."""
    row: dict[str, float] = {"valid_loss": losses.loss}
    if losses.first_k:
        n = losses.texts
        row |= {"first_tokens": losses.first_k, "first_loss": losses.first,
                "rest_loss": losses.rest, "first_sum_per_title": losses.first_sum / n,
                "rest_sum_per_title": (losses.loss_sum - losses.first_sum) / n,
                "tokens_per_title": losses.tokens / n}
    return row


def kth_token_baselines(cfg: Any, ds: Any, splits: Any, k: int,
                        lams: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)) -> list[dict[str, Any]]:
    """Per text, in nats: the k-th token of the next item's text under its frequency among all
    training targets (add-0.5 smoothing over the vocabulary), and under that mixed with the
    history's own k-th tokens, lam chosen on the training texts; one row per split."""
    import math
    from collections import Counter
    from functools import cache

    from glossrec.models import load_tokenizer
    from glossrec.train.loop import scored_examples

    tok = load_tokenizer(cfg.model)

    @cache
    def kth(item: int) -> int:
        ids = tok(ds.catalog.text(item), add_special_tokens=False)["input_ids"]
        return ids[k - 1] if len(ids) >= k else -1

    freq = Counter(kth(e.target) for e in splits.train)
    n, vocab = sum(freq.values()), len(tok)
    keep = cfg.prompt.max_history_items or None

    def loss(examples: list[Any], lam: float) -> float:
        total = 0.0
        for e in examples:
            hist = [kth(i) for i in (e.history[-keep:] if keep else e.history)]
            t = kth(e.target)
            p = (1 - lam) * (freq[t] + 0.5) / (n + 0.5 * vocab)
            if hist:
                p += lam * hist.count(t) / len(hist)
            total -= math.log(p)
        return total / len(examples)

    texts = {s: scored_examples(cfg, splits, s) for s in ("valid", "train")}
    lam = min(lams, key=lambda x: loss(texts["train"], x))
    return [{"weights": f"baseline: k-th token frequency{' + history' if mix else ''}",
             "split": s, "first_tokens": k, "lam": lam if mix else 0.0,
             "kth_token_loss": loss(texts[s], lam if mix else 0.0)}
            for mix in (False, True) for s in ("valid", "train")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="a training config (its [train] "
                   "validation settings and prompt)")
    p.add_argument("--weights", nargs="*", default=[],
                   help="shipped model names or weights folders (an adapter, a checkpoint)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--first", type=int, default=0, metavar="K",
                   help="also split the next item's loss: its first K tokens and the rest")
    p.add_argument("--split", nargs="+", choices=["valid", "train"], default=["valid"],
                   help="score the validation users' next item, and/or training texts' last item")
    p.add_argument("--baseline", action="store_true",
                   help="also score the K-th token (--first K) by its training frequency, alone "
                        "and mixed with the history's K-th tokens")
    p.add_argument("--json", type=Path, default=RESULTS / "valid_loss.json")
    args = p.parse_args(argv)
    if args.baseline and not args.first:
        p.error("--baseline needs --first K")

    import torch

    from glossrec.config import load_config
    from glossrec.splits import prepare
    from glossrec.train import validation_losses

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    before = machine()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = load_config(args.config, overrides)
    prep = prepare(cfg)
    rows: list[dict[str, Any]] = []
    for w in args.weights:
        for split in args.split:
            t0 = time.perf_counter()
            row = losses_row(validation_losses(cfg.updated(train={"init_adapter": w}),
                                               prep.dataset, prep.splits, args.first, split))
            loss = row["valid_loss"]
            rows.append({"weights": w, "split": split, **row, "seconds": time.perf_counter() - t0})
            print(f"{w} ({split}): {loss:.4f}", file=sys.stderr)
    base_rows: list[dict[str, Any]] = []
    if args.baseline:
        base_rows = kth_token_baselines(cfg, prep.dataset, prep.splits, args.first)
        print_columns(base_rows, [("baseline", "weights", "{}"), ("split", "split", "{}"),
                                  ("lam", "lam", "{:.2f}"),
                                  (f"token {args.first}, nats", "kth_token_loss", "{:.2f}")])
    columns = [("weights", "weights", "{}"), ("split", "split", "{}"),
               ("loss", "valid_loss", "{:.4f}")]
    if args.first:
        columns += [(f"first {args.first} tokens", "first_loss", "{:.3f}"),
                    ("rest", "rest_loss", "{:.3f}"),
                    ("first, per title", "first_sum_per_title", "{:.2f}"),
                    ("rest, per title", "rest_sum_per_title", "{:.2f}")]
    if rows:
        print_columns(rows, columns + [("s", "seconds", "{:.0f}")])
    write_results(args.json, {"config": str(args.config.relative_to(ROOT) if args.config.is_absolute()
                                            else args.config),
                              "overrides": overrides,
                              "valid_examples": cfg.train.max_valid_examples,
                              "valid_loss_kind": cfg.train.valid_loss, "rows": rows,
                              "baselines": base_rows}, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
