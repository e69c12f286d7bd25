"""Does the fine-tuned generator read the history? The target loss of validation users with
their own history, with another user's history, and with none, at each learning-curve point.

A model that writes good queries must put more probability on the next item given *this*
user's history than given someone else's. Recall@5 over 12k items moves only once that gap is
large; the gap shows the trend long before. For each adapter the same validation users' true
next items are scored (target tokens only, teacher-forced, the training loss):

- own:      the user's prompt, as in training;
- shuffled: the prompt of the next user in the sample (a fixed rotation: every user gets
            another user's history, the targets stay);
- empty:    the prompt with no history items (the model's prior over titles).

history information = shuffled - own (nats per target token): what the user's own history is
worth over a random one. own - empty < 0 shows history helps at all.

Run alone on an idle machine, after bench/learning_curve.py has saved its points:
  .venv/bin/python bench/history_use.py --config configs/smollm2-beauty.toml \\
      --run runs/smollm2-beauty --points 0 100 250 500 750
Writes bench/results/history_use.json and a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, machine, print_markdown, write_results  # noqa: E402


def conditions(examples: list, catalog: Any, tokenizer: Any, prompt_cfg: Any) -> dict[str, list]:
    """The encoded target-loss texts of each condition (own / shuffled / empty history)."""
    from glossrec.prompts import PromptBuilder, make_pairs
    from glossrec.train import encode_pairs

    builder = PromptBuilder.from_config(tokenizer, prompt_cfg, catalog.item_format)
    n = len(examples)
    variants = {
        "own": examples,
        "shuffled": [dataclasses.replace(ex, history=examples[(i + 1) % n].history)
                     for i, ex in enumerate(examples)],
        "empty": [dataclasses.replace(ex, history=()) for ex in examples],
    }
    return {name: encode_pairs(tokenizer, make_pairs(exs, catalog, builder, "train"), "target")
            for name, exs in variants.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "smollm2-beauty.toml")
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "smollm2-beauty")
    p.add_argument("--points", type=int, nargs="+", default=[0, 100, 250, 500])
    p.add_argument("--valid-users", type=int, default=64)
    p.add_argument("--json", type=Path, default=RESULTS / "history_use.json")
    args = p.parse_args(argv)

    from glossrec.config import load_config
    from glossrec.models import load_model, load_tokenizer
    from glossrec.pipeline import load_data, prepare
    from glossrec.train import cpu_has_native_bf16, evaluate_loss

    before = machine()
    cfg = load_config(args.config, {"evaluate.split": "valid", "evaluate.users": args.valid_users})
    ds = load_data(cfg)
    examples = prepare(cfg, ds).examples
    tok = load_tokenizer(cfg.model)
    data = conditions(examples, ds.catalog, tok, cfg.prompt)
    bf16 = cpu_has_native_bf16()  # as the run trained; the same for every point
    rows = []
    for steps in args.points:
        adapter = None if steps == 0 else args.run / "curve" / f"step-{steps:06d}" / "adapter"
        if adapter is not None and not adapter.is_dir():
            p.error(f"{adapter}: no saved adapter for point {steps} (run bench/learning_curve.py)")
        model, _ = load_model(cfg.model, adapter, device="cpu")
        t0 = time.perf_counter()
        loss = {name: evaluate_loss(model, enc, tok.pad_token_id, 8, "cpu", bf16)
                for name, enc in data.items()}
        examples_seen = 0 if adapter is None else json.loads(
            (adapter / "glossrec_train.json").read_text())["examples_seen_total"]
        rows.append({"steps": steps, "examples_seen": examples_seen, **loss,
                     "history_information": loss["shuffled"] - loss["own"],
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
        del model
    write_results(args.json, {"config": str(args.config), "run": str(args.run),
                              "valid_users": len(examples), "bf16": bf16, "points": rows}, before)
    print(f"\n{len(examples)} validation users; load average {before['load_avg_1m']} before")
    print_markdown(["examples seen", "own history", "another user's", "none", "history information"],
                   [[f"{r['examples_seen']:,}", f"{r['own']:.3f}", f"{r['shuffled']:.3f}",
                     f"{r['empty']:.3f}", f"{r['history_information']:+.3f}"] for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
