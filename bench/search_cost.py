"""Where PMI-guided grounded beam search spends its time on CPU, and what two speed-ups would buy.

The search (``generate.constrain = "catalog"``, ``prior_weight = 1.0``: the demo's and the
shipped model's decoding), in transformers' generate loop (``grounded_search = "transformers"``:
what this bench found led to glossrec's own loop, now the default, which bench/grounded.py
compares with it) is timed on Beauty validation users, with its loop counted from the
outside (no change to glossrec): search steps per batch, beam rows forwarded, prior rows
(distinct live prefixes), the seconds inside the prior, and how many prior rows a **cache shared
across users** would have served (the prefix was already computed by an earlier batch's search).

Arms, one model load each, in this process, one after the other:
- ``fp32``: the search as transformers' loop runs it;
- ``int8``: the same search with every ``nn.Linear`` dynamically quantized to int8
  (``torch.ao.quantization.quantize_dynamic``; a probe only, glossrec has no such setting). Its
  texts are compared with fp32's: the speed is only worth having if the search stays the same.

Run alone on an idle machine, from the repo root:
  .venv/bin/python bench/search_cost.py --users 16 [--arms fp32,int8]
Writes bench/results/search_cost.json (commit, machine, load) and prints a table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine, print_columns, write_results  # noqa: E402

log = logging.getLogger("bench.search_cost")


class _Counters:
    """Counts _PriorGuidance's calls from the outside: one instance per batch's search."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.stats: Counter[str] = Counter()
        self.prior_s = 0.0
        self.seen: set[tuple[int, ...]] = set()
        self.batch_seen: set[tuple[int, ...]] = set()

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Count while inside; the class gets its own methods back after (a second arm must
        not count into the first arm's counters)."""
        from glossrec.generate import hf

        cls, counters = hf._PriorGuidance, self
        init, call, priors = cls.__init__, cls.__call__, cls._priors

        def _init(guide: Any, *a: Any, **k: Any) -> None:
            init(guide, *a, **k)
            counters.seen |= counters.batch_seen  # an earlier batch's prefixes
            counters.batch_seen = set()
            counters.steps.append(0)

        def _call(guide: Any, input_ids: Any, scores: Any) -> Any:
            counters.steps[-1] += 1
            counters.stats["beam_rows"] += int(input_ids.shape[0])
            return call(guide, input_ids, scores)

        def _priors(guide: Any, prefixes: list[tuple[int, ...]]) -> Any:
            counters.stats["prior_rows"] += len(prefixes)
            counters.stats["prior_rows_seen_before"] += sum(p in counters.seen for p in prefixes)
            counters.batch_seen.update(prefixes)
            t0 = time.perf_counter()
            out = priors(guide, prefixes)
            counters.prior_s += time.perf_counter() - t0
            return out

        cls.__init__, cls.__call__, cls._priors = _init, _call, _priors
        try:
            yield
        finally:
            cls.__init__, cls.__call__, cls._priors = init, call, priors


def run_arm(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from glossrec.config import EMBEDDED_LLM, load_config
    from glossrec.generate import make_generator
    from glossrec.pipeline import prepare
    from glossrec.prompts import test_prompts

    cfg = load_config(None, {
        "data": {"path": str(args.data)}, "model": {"name": EMBEDDED_LLM},
        "generate": {"batch_size": args.batch_size, "constrain": "catalog",
                     "grounded_score": "beam", "prior_weight": 1.0,
                     # what this bench counts: transformers' loop, with _PriorGuidance in it
                     # (glossrec's own loop, the default since, is bench/grounded.py's)
                     "grounded_search": "transformers"},
        "retrieve": {"retriever": "bm25", "exclude_history": True},
        "prompt": {"max_history_items": 5},
        "evaluate": {"split": "valid", "users": args.users, "user_seed": 0}})
    prep = prepare(cfg)
    cat = prep.dataset.catalog
    gen: Any = make_generator(cfg, args.adapter, cat.texts())
    if arm == "int8":
        from torch.ao.quantization import quantize_dynamic

        gen.model = quantize_dynamic(gen.model, {torch.nn.Linear}, dtype=torch.qint8)
    prompts = test_prompts(prep.examples, cat, gen.tokenizer, cfg.prompt,
                           reserve=cfg.generate.max_new_tokens)
    exclude = [list(ex.history) for ex in prep.examples]
    counters = _Counters()
    with counters.installed():
        t0, c0 = time.perf_counter(), time.process_time()
        texts = gen.generate([p for _, p in prompts], exclude)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    lengths = [len(t) for t in gen.trie.encode([t for row in texts for t in row])]
    s = counters.stats
    return {"arm": arm, "users": len(prompts), "s_per_user": wall / len(prompts),
            "cpu_s_per_user": cpu / len(prompts), "prior_share": counters.prior_s / wall,
            "steps_per_batch": counters.steps, "beam_rows": s["beam_rows"],
            "prior_rows": s["prior_rows"],
            "prior_rows_seen_before": s["prior_rows_seen_before"],
            "cross_user_reuse": s["prior_rows_seen_before"] / max(s["prior_rows"], 1),
            "item_tokens_mean": sum(lengths) / max(len(lengths), 1),
            "item_tokens_max": max(lengths, default=0),
            "texts": {uid: row for (uid, _), row in zip(prompts, texts)}}


def agreement(a: dict[str, list[str]], b: dict[str, list[str]]) -> dict[str, float]:
    """How far arm b's texts are from arm a's, per user: identical lists, the same top text,
    and the share of a's texts that b also returns."""
    users = list(a)
    return {"same_list": sum(a[u] == b[u] for u in users) / len(users),
            "same_top": sum(a[u][:1] == b[u][:1] for u in users) / len(users),
            "text_overlap": sum(len(set(a[u]) & set(b[u])) for u in users)
            / max(sum(len(a[u]) for u in users), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/amazon2014/beauty")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--adapter", type=Path, default=ROOT / "src/glossrec/shipped/smollm2-beauty")
    ap.add_argument("--arms", default="fp32,int8")
    ap.add_argument("--json", type=Path, default=RESULTS / "search_cost.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := [a for a in arms if a not in ("fp32", "int8")]:
        ap.error(f"unknown arm(s) {unknown}; known: fp32, int8")
    before = machine()
    rows = []
    for arm in arms:
        log.info("arm %s: %d users", arm, args.users)
        rows.append(run_arm(arm, args))
    if "fp32" in arms:
        ref = next(r for r in rows if r["arm"] == "fp32")["texts"]
        for r in rows:
            r.update(agreement(ref, r["texts"]))
    for r in rows:
        r["speedup"] = rows[0]["s_per_user"] / r["s_per_user"]
        r["steps_mean"] = sum(r["steps_per_batch"]) / max(len(r["steps_per_batch"]), 1)
    print_columns(rows, [("arm", "arm", "{}"), ("users", "users", "{}"),
                         ("s/user", "s_per_user", "{:.2f}"),
                         ("speed-up", "speedup", "{:.2f}x"),
                         ("prior share", "prior_share", "{:.0%}"),
                         ("steps/batch", "steps_mean", "{:.1f}"),
                         ("beam rows", "beam_rows", "{}"), ("prior rows", "prior_rows", "{}"),
                         ("cross-user reuse", "cross_user_reuse", "{:.1%}"),
                         ("item tokens", "item_tokens_mean", "{:.1f}"),
                         ("same top text", "same_top", "{:.0%}"),
                         ("text overlap", "text_overlap", "{:.0%}")])
    path = write_results(args.json, {
        "what": "PMI-guided grounded beam search (prior_weight 1.0, 5 beams, history excluded) "
                "on Beauty validation users: time split, search counts, int8 probe",
        "users": args.users, "batch_size": args.batch_size, "adapter": str(args.adapter),
        "rows": rows}, before)
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
