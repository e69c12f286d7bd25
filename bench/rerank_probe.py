"""Probe, validation users only: can the fine-tuned LM order Last-Item Search's candidates
better than BM25 does?

LIS-BM25's top N items (history excluded) for each of the curve's 200 validation users are
scored by the LM with one teacher-forced pass each: log p(item | prompt) and the empty-history
prior log p(item | no history). Every ordering comes from that one pass: per-token or summed
PMI at prior weights 0..1, alone or fused (RRF, k = 60) with LIS's own rank. R@5 of each
against LIS's R@5 on the same users; LIS's R@N is the ceiling of any re-ranking.

  .venv/bin/python bench/rerank_probe.py --adapter runs/smollm2-beauty/curve/step-000750/adapter \
      --candidates 20
Writes bench/results/rerank_probe.json. With --prior-table FILE the priors are read from a prior
table (glossrec.generate.prior_table; made there on the first run, about 30 min for Beauty on 2
cores, then reused) instead of one more teacher-forced pass per candidate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, machine, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "smollm2-beauty.toml")
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--valid-users", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="the validation users' draw")
    p.add_argument("--prior-table", type=Path, default=None,
                   help="read the priors from this prior table file (made if missing)")
    p.add_argument("--json", type=Path, default=RESULTS / "rerank_probe.json")
    args = p.parse_args(argv)

    import torch

    from glossrec.config import load_config
    from glossrec.generate import make_generator
    from glossrec.pipeline import build_index, load_data, prepare, run_lis
    from glossrec.prompts import test_prompts

    before = machine()
    n = args.candidates
    cfg = load_config(args.config, {"evaluate.split": "valid", "evaluate.users": args.valid_users,
                                    "evaluate.cutoffs": [5, n], "evaluate.user_seed": args.seed,
                                    "generate.prior_table": args.prior_table is not None})
    ds = load_data(cfg)
    ex = prepare(cfg, ds).examples
    lis = run_lis(cfg, None, ds, build_index(cfg, ds))
    cands = lis.ranked[:, :n]
    t0 = time.perf_counter()
    gen = make_generator(cfg, args.adapter, ds.catalog.texts(), args.prior_table)
    table = gen.prior_table() if args.prior_table is not None else None

    def priors_of(keys: list[int]) -> list[float]:
        if table is None:
            return gen.prior_logprobs([ds.catalog.text(k) for k in keys])
        return [float(table.edges(gen.trie.path(gen.trie.tokens(k))).sum()) for k in keys]

    prompts = dict(test_prompts(ex, ds.catalog, gen.tokenizer, cfg.prompt,
                                reserve=cfg.generate.max_new_tokens))
    lp, ntok, prior = (np.full((len(ex), n), -1e9), np.ones((len(ex), n)), np.zeros((len(ex), n)))
    with torch.inference_mode():
        for s in range(0, len(ex), 4):
            part = range(s, min(s + 4, len(ex)))
            ids, mask = gen.pad_left(gen.encode([prompts[ex[u].user_id] for u in part]))
            slots = [(u, j) for u in part for j in range(n) if cands[u, j] >= 0]
            pairs = [(u - s, list(gen.trie.tokens(int(cands[u, j])))) for u, j in slots]
            scored = gen.item_logprobs(ids, mask, pairs, gen.prefill(ids, mask))
            priors = priors_of([int(cands[u, j]) for u, j in slots])
            for (u, j), (value, count), pr in zip(slots, scored, priors):
                lp[u, j], ntok[u, j], prior[u, j] = value, count, pr
    seconds = time.perf_counter() - t0
    target = np.array([e.target for e in ex])

    def top5_position(order: np.ndarray) -> np.ndarray:
        """Per user, where the target sits in the ordering's top 5 (0-4), or -1."""
        out = np.full(len(ex), -1)
        for u in range(len(ex)):
            where = np.nonzero(cands[u, order[u, :5]] == target[u])[0]
            out[u] = where[0] if len(where) else -1
        return out

    orders = {"LIS-BM25 (its own order)": np.tile(np.arange(n), (len(ex), 1))}
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        per_tok = (lp - w * prior) / ntok
        orders[f"LM, prior weight {w}, per token"] = np.argsort(-per_tok, axis=1, kind="stable")
        orders[f"LM, prior weight {w}, summed"] = np.argsort(-(lp - w * prior), axis=1, kind="stable")
        lm_rank = np.argsort(np.argsort(-per_tok, axis=1, kind="stable"), axis=1)
        fused = 1 / (60 + lm_rank) + 1 / (60 + np.arange(n))[None, :]
        orders[f"LM per token (w {w}) + LIS rank, RRF"] = np.argsort(-fused, axis=1, kind="stable")
    pos = {name: top5_position(order) for name, order in orders.items()}
    recall = {name: (p >= 0).astype(float) for name, p in pos.items()}
    ndcg = {name: np.where(p >= 0, 1 / np.log2(np.maximum(p, 0) + 2), 0.0) for name, p in pos.items()}
    ceiling = float(np.mean([target[u] in cands[u] for u in range(len(ex))]))
    # Paired bootstrap 95% CI of each ordering's R@5 minus LIS's, over users.
    draws = np.random.default_rng(0).integers(0, len(ex), (2000, len(ex)))
    base = recall["LIS-BM25 (its own order)"]
    ci = {name: [float(x) for x in np.percentile((h - base)[draws].mean(1), [2.5, 97.5])]
          for name, h in recall.items()}
    print(f"{len(ex)} validation users (seed {args.seed}), LIS-BM25 top {n} (R@{n} = {ceiling:.3f}), "
          f"{seconds / len(ex):.2f} s/user; load average {before['load_avg_1m']} before")
    print("| ordering | R@5 | R@5 - LIS, 95% CI | N@5 |")
    for name in orders:
        lo, hi = ci[name]
        print(f"| {name} | {recall[name].mean():.3f} | [{lo:+.3f}, {hi:+.3f}] | {ndcg[name].mean():.4f} |")
    write_results(args.json, {
        "adapter": str(args.adapter), "candidates": n, "users": len(ex), "seed": args.seed,
        "lis_recall_at_n": ceiling, "s_per_user": seconds / len(ex),
        "recall@5": {k: float(v.mean()) for k, v in recall.items()},
        "ndcg@5": {k: float(v.mean()) for k, v in ndcg.items()},
        "recall@5_minus_lis_ci95": ci,
        # Per user (in "users" order): the target's place in each ordering's top 5, or -1;
        # runs on other draws pool by these.
        "top5_position": {"users": [e.user_id for e in ex],
                          **{k: v.tolist() for k, v in pos.items()}}}, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
