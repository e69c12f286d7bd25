"""How many prompts a grounded search should prefill per forward pass (search.PREFILL_ROWS).

Each user's prompt is prefilled after the template's beginning, whose KV it takes from the
empty-history prompt (glossrec.generate.shared_kv.prefill_after_head). One prompt leaves about
100 tokens to run, so its matmuls have about 100 rows; several prompts in one pass, right-padded
to the longest, give larger matmuls at the cost of their padding. This times the same
validation prompts (sorted by length, as generate() sorts them) prefilled in groups of each
size, rounds interleaved, and keeps each size's best round (a rate, not an average over
interruptions).

    .venv/bin/python bench/prefill.py          # bench/results/prefill.json, ~4 min

Run it alone on the machine: the load average is recorded with the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine, matmul_flops, print_columns, write_results  # noqa: E402
from grounded import model_dims  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/amazon2014/beauty")
    ap.add_argument("--adapter", type=Path, default=ROOT / "src/glossrec/shipped/smollm2-beauty")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "prefill.json")
    args = ap.parse_args(argv)
    before = machine()

    import torch

    from glossrec.config import EMBEDDED_LLM, load_config
    from glossrec.generate import make_generator
    from glossrec.generate.shared_kv import cache_layers, prefill_after_head
    from glossrec.pipeline import prepare
    from glossrec.prompts import test_prompts

    torch.set_num_threads(args.threads)
    cfg = load_config(None, {
        "data": {"path": str(args.data)}, "model": {"name": EMBEDDED_LLM},
        "generate": {"constrain": "catalog", "prior_weight": 1.0},
        "prompt": {"max_history_items": 5},
        "evaluate": {"split": "valid", "users": args.prompts, "user_seed": 0}})
    prep = prepare(cfg)
    gen: Any = make_generator(cfg, args.adapter, prep.dataset.catalog.texts())
    head_ids = gen.prior_prompt_ids()[:-1]
    head = cache_layers(gen.prior_prompt_cache())
    texts = [p for _, p in test_prompts(prep.examples[:args.prompts], prep.dataset.catalog,
                                        gen.tokenizer, cfg.prompt,
                                        reserve=cfg.generate.max_new_tokens)]
    prompts = sorted((ids[:-1] for ids in gen.encode(texts)), key=len)
    dims = model_dims(gen.model)

    def run(group: int) -> tuple[float, int]:
        """Seconds to prefill every prompt `group` at a time, and the tokens run (padding
        included)."""
        tokens = 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(prompts), group):
                part = prompts[start:start + group]
                made = prefill_after_head(gen.model, part, head_ids, head)
                tokens += sum(m.run for m in made)
        return time.perf_counter() - t0, tokens

    run(max(args.groups))  # warm-up: allocations, kernels
    rate = matmul_flops(args.threads)  # the machine's rate now, for comparison
    best: dict[int, tuple[float, int]] = {}
    for _ in range(args.rounds):
        for group in args.groups:
            seconds, tokens = run(group)
            if group not in best or seconds < best[group][0]:
                best[group] = (seconds, tokens)
    rows = []
    for group in args.groups:
        seconds, tokens = best[group]
        flop = 2 * dims["body_params"] * tokens
        rows.append({"prompts_per_pass": group, "ms_per_prompt": 1000 * seconds / len(prompts),
                     "padded_tokens_per_prompt": tokens / len(prompts),
                     "gflop_s": flop / seconds / 1e9})
    base = rows[0]["ms_per_prompt"]
    for row in rows:
        row["speed_up"] = base / row["ms_per_prompt"]
    print_columns(rows, [("prompts/pass", "prompts_per_pass", "{}"),
                         ("ms/prompt", "ms_per_prompt", "{:.0f}"),
                         ("tokens/prompt", "padded_tokens_per_prompt", "{:.1f}"),
                         ("GFLOP/s", "gflop_s", "{:.1f}"),
                         ("speed-up", "speed_up", "{:.2f}x")])
    path = write_results(args.out, {
        "what": "prefill_after_head of Beauty validation prompts (newest 5 items), after the "
                "template's beginning, in groups of each size; best of the rounds",
        "prompts": len(prompts), "rounds": args.rounds, "threads": args.threads,
        "matmul_gflops_fp32": rate / 1e9, "rows": rows}, before)
    print(f"fp32 matmul rate {rate / 1e9:.1f} GFLOP/s; load average {before['load_avg_1m']} "
          f"before; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
