"""Probe, validation users only: can the fine-tuned LM order Last-Item Search's candidates
better than BM25 does?

LIS-BM25's top N items (history excluded) for each of --valid-users validation users (drawn with
--seed) are scored by the LM with one teacher-forced pass each: log p(item | prompt) and the
empty-history prior log p(item | no history). Every ordering comes from that one pass: per-token
or summed PMI at prior weights 0..1, alone or fused (RRF, k = 60) with LIS's own rank. R@5 and
N@5 of each against LIS's on the same users, with paired bootstrap CIs; LIS's R@N is the
ceiling of any re-ranking.

  .venv/bin/python bench/rerank_probe.py --config configs/gloss-shipped-beauty.toml \
      --adapter src/glossrec/shipped/smollm2-beauty --candidates 20 --prior-table FILE

Once an ordering is chosen on validation users, ``--test ORDERING`` scores the config's fixed
test users (evaluate.users, evaluate.user_seed) with it, once, and reports only it against
LIS-BM25 under both history rules (paired bootstrap CIs of R@5 and N@5); its scores are kept
apart from the validation users' (a user's test example is another prompt).

``--candidates-from RUN`` takes each user's candidates from a scored run's rankings.jsonl instead
(e.g. a GLoSS run that returned 20 grounded texts per user), in that run's order: the orderings
are then of the run's own list, and LIS-BM25's own ranking on the same users is the reference
of the CIs.

Writes bench/results/rerank_probe.json (--json). With --prior-table FILE the priors are read from
a prior table (glossrec.generate.prior_table; made there on the first run, about 30 min for
Beauty on 2 cores, then reused) instead of one more teacher-forced pass per candidate.

The LM's scores are kept per user as they are made (every 40 users, written atomically; --scores
FILE, by default under runs/rerank_probe/), so a killed run resumes where it stopped, and a
sample of thousands of users can be scored over several runs; draws that share users share
their scores. The file records the adapter's content, the config and N; a run with others
refuses it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, machine, write_results  # noqa: E402


@dataclass
class Scores:
    """The LM's scores per user id: (candidates, log p(item | prompt), tokens, prior), [N] each."""

    users: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> Scores:
        if not path.is_file():
            return cls({})
        with np.load(path) as z:
            saved = json.loads(str(z["meta"]))
            if saved != meta:
                differ = sorted(k for k in meta if saved.get(k) != meta[k])
                raise SystemExit(f"{path}: scores made with another {', '.join(differ)}; "
                                 "pass another --scores file")
            arrays = [z[k] for k in ("cands", "lp", "ntok", "prior")]
            ids = [str(u) for u in z["users"]]
        return cls({u: tuple(a[i] for a in arrays) for i, u in enumerate(ids)})  # type: ignore[misc]

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        from glossrec.io import atomic_write

        ids = list(self.users)
        cols = {k: np.stack([self.users[u][i] for u in ids])
                for i, k in enumerate(("cands", "lp", "ntok", "prior"))}
        with atomic_write(path, "wb") as f:
            np.savez(f, users=np.asarray(ids), meta=np.asarray(json.dumps(meta)), **cols)


LIS_ORDER = "LIS-BM25 (its own order)"


def orderings(lp: np.ndarray, ntok: np.ndarray, prior: np.ndarray,
              source: str = "LIS") -> dict[str, np.ndarray]:
    """Every ordering of the N candidates [users, N] (indices into them, best first) that the
    probe compares: the candidates' own (LIS's, or `source`'s), the LM's per token or summed at
    prior weights 0..1, and the LM per token fused with the candidates' own rank (RRF, k = 60).
    Summed PMI at weight w orders by log p(item | prompt) - w log p(item | no history)."""
    users, n = lp.shape
    own = LIS_ORDER if source == "LIS" else f"{source} (its own order)"
    orders = {own: np.tile(np.arange(n), (users, 1))}
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        per_tok = (lp - w * prior) / ntok
        orders[f"LM, prior weight {w}, per token"] = np.argsort(-per_tok, axis=1, kind="stable")
        orders[f"LM, prior weight {w}, summed"] = np.argsort(-(lp - w * prior), axis=1, kind="stable")
        lm_rank = np.argsort(np.argsort(-per_tok, axis=1, kind="stable"), axis=1)
        fused = 1 / (60 + lm_rank) + 1 / (60 + np.arange(n))[None, :]
        orders[f"LM per token (w {w}) + {source} rank, RRF"] = np.argsort(-fused, axis=1, kind="stable")
    return orders


def at5(pos: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user R@5 and N@5 from the target's place in a top 5 (0-4, or -1), by glossrec's
    own metric functions."""
    from glossrec.evaluate import ndcg_at, recall_at

    ranks = np.where(pos >= 0, pos + 1.0, np.inf)
    return {"recall@5": recall_at(ranks, 5), "ndcg@5": ndcg_at(ranks, 5)}


def paired_ci(a: np.ndarray, b: np.ndarray) -> list[float]:
    """95% paired bootstrap CI of mean(a - b) over users: evaluate.bootstrap_ci, 2,000 draws."""
    from glossrec.evaluate import bootstrap_ci

    return list(bootstrap_ci(a - b, n_boot=2000))


def run_candidates(run: Path, catalog: Any, users: list[str], n: int) -> np.ndarray:
    """[users, n] catalog indices: each user's first n items in RUN/rankings.jsonl, -1 padded."""
    from glossrec.compare import read_run

    ranked = read_run(run).users
    missing = [u for u in users if u not in ranked]
    if missing:
        raise SystemExit(f"{run}: {len(missing)} of the {len(users)} users have no ranking "
                         f"(e.g. {missing[0]}): score the run on the same users")
    out = np.full((len(users), n), -1)
    for r, u in enumerate(users):
        items = ranked[u][1][:n]
        out[r, :len(items)] = catalog.indices(items)
    return out


def report_test(args: argparse.Namespace, cfg: Any, ds: Any, ex: list[Any],
                orders: dict[str, np.ndarray], top5_position: Any, seconds: float, scored: int,
                before: dict[str, Any]) -> int:
    """The one ordering chosen on validation users against LIS-BM25 on the test users, under
    both history rules: R@5 and N@5 with paired bootstrap CIs of the differences."""
    from glossrec.pipeline import build_index, run_lis

    if args.test not in orders:
        raise SystemExit(f"--test: unknown ordering {args.test!r}; one of: {', '.join(orders)}")
    kept = run_lis(cfg.updated(retrieve={"exclude_history": False}), None, ds,
                   build_index(cfg, ds))
    at = {u: i for i, u in enumerate(kept.user_ids)}
    rows = [e.user_id for e in ex]
    per_user = {"LIS-BM25, history kept": {
        m: np.asarray(kept.per_user[m])[[at[u] for u in rows]] for m in ("recall@5", "ndcg@5")}}
    for name in (LIS_ORDER, args.test):
        per_user[name] = at5(top5_position(orders[name]))
    chosen = per_user[args.test]
    versus = {"LIS-BM25, history excluded": per_user[LIS_ORDER],
              "LIS-BM25, history kept": per_user["LIS-BM25, history kept"]}
    print(f"{len(ex)} test users, LIS-BM25's top {args.candidates} (history excluded) re-ranked by: "
          f"{args.test}; {scored} scored by this run; load average {before['load_avg_1m']} before")
    print("| run | R@5 | N@5 |")
    for name, m in per_user.items():
        print(f"| {name} | {m['recall@5'].mean():.4f} | {m['ndcg@5'].mean():.4f} |")
    diffs = {}
    for name, m in versus.items():
        diffs[name] = {k: {"difference": float((chosen[k] - m[k]).mean()),
                           "ci95": paired_ci(chosen[k], m[k])} for k in ("recall@5", "ndcg@5")}
        d = diffs[name]
        print(f"re-ranked - {name}: R@5 {d['recall@5']['difference']:+.4f} "
              f"[{d['recall@5']['ci95'][0]:+.4f}, {d['recall@5']['ci95'][1]:+.4f}], N@5 "
              f"{d['ndcg@5']['difference']:+.4f} [{d['ndcg@5']['ci95'][0]:+.4f}, "
              f"{d['ndcg@5']['ci95'][1]:+.4f}]")
    write_results(args.json, {
        "adapter": str(args.adapter), "candidates": args.candidates, "split": "test",
        "users": len(ex), "user_seed": cfg.evaluate.user_seed, "ordering": args.test,
        "scored_by_this_run": scored, "s_per_user": seconds / scored if scored else None,
        "metrics": {name: {k: float(v.mean()) for k, v in m.items()}
                    for name, m in per_user.items()},
        "reranked_minus": diffs, "users_ids": rows}, before)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "smollm2-beauty.toml")
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--valid-users", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="the validation users' draw")
    p.add_argument("--prior-table", type=Path, default=None,
                   help="read the priors from this prior table file (made if missing)")
    p.add_argument("--scores", type=Path, default=None,
                   help="keep the LM's scores per user here and resume from it (default: "
                        "runs/rerank_probe/<adapter sha256[:12]>-top<N>.npz)")
    p.add_argument("--bf16", action="store_true",
                   help="generate.bf16: bf16 weights (CPUs with native bf16); kept apart from "
                        "fp32 scores (its own --scores file and prior table)")
    p.add_argument("--test", metavar="ORDERING", default=None,
                   help="score the config's fixed test users (evaluate.users, evaluate.user_seed) "
                        "once, with this ordering chosen on validation users: it against LIS-BM25 "
                        "with history excluded and kept, paired CIs; no other ordering is shown")
    p.add_argument("--candidates-from", type=Path, default=None, metavar="RUN",
                   help="each user's first --candidates items of RUN/rankings.jsonl (a scored run "
                        "on the same users) instead of LIS-BM25's top N")
    p.add_argument("--json", type=Path, default=RESULTS / "rerank_probe.json")
    args = p.parse_args(argv)
    if args.candidates_from and args.test:
        raise SystemExit("--test scores LIS-BM25's candidates; --candidates-from is for validation")

    import torch

    from glossrec.config import load_config
    from glossrec.fingerprint import files_sha256
    from glossrec.generate import make_generator
    from glossrec.pipeline import build_index, load_data, prepare, run_lis
    from glossrec.prompts import test_prompts

    before = machine()
    n = args.candidates
    users = ({} if args.test else {"evaluate.split": "valid", "evaluate.users": args.valid_users,
                                   "evaluate.user_seed": args.seed})
    cfg = load_config(args.config, {**users, "evaluate.cutoffs": [5, n],
                                    "generate.prior_table": args.prior_table is not None,
                                    "generate.bf16": args.bf16})
    if args.test and cfg.evaluate.split != "test":
        raise SystemExit(f"--test: {args.config} evaluates the {cfg.evaluate.split} split")
    ds = load_data(cfg)
    ex = prepare(cfg, ds).examples
    lis = run_lis(cfg, None, ds, build_index(cfg, ds))
    cands = lis.ranked[:, :n] if args.candidates_from is None else run_candidates(
        args.candidates_from, ds.catalog, [e.user_id for e in ex], n)
    # What a user's scores depend on: not the draw of users (evaluate), so draws share them.
    dump = cfg.model_dump(mode="json")
    meta = {"adapter_sha256": files_sha256(args.adapter), "candidates": n, "bf16": cfg.generate.bf16,
            "candidates_from": str(args.candidates_from) if args.candidates_from else None,
            "config": {k: dump[k] for k in ("data", "split", "prompt", "model", "retrieve")}}
    if args.test:  # a user's test example is not their validation example
        meta["split"] = "test"
    source = f"-{args.candidates_from.name}" if args.candidates_from else ""
    name = (f"{meta['adapter_sha256'][:12]}-top{n}{source}{'-bf16' if args.bf16 else ''}"
            f"{'-test' if args.test else ''}.npz")
    scores_file = args.scores or ROOT / "runs" / "rerank_probe" / name
    kept = Scores.load(scores_file, meta)
    lp, ntok, prior = (np.full((len(ex), n), -1e9), np.ones((len(ex), n)), np.zeros((len(ex), n)))
    todo = []
    for u, e in enumerate(ex):
        row = kept.users.get(e.user_id)
        if row is not None and np.array_equal(row[0], cands[u]):
            lp[u], ntok[u], prior[u] = row[1:]
        else:
            todo.append(u)
    print(f"{len(ex) - len(todo)} of {len(ex)} users scored already; scoring {len(todo)}", flush=True)
    t0 = time.perf_counter()
    if todo:  # the model is loaded only when some user is still to be scored
        gen = make_generator(cfg, args.adapter, ds.catalog.texts(), args.prior_table)
        prompts = dict(test_prompts([ex[u] for u in todo], ds.catalog, gen.tokenizer, cfg.prompt,
                                    reserve=cfg.generate.max_new_tokens))
        with torch.inference_mode():
            for b, s in enumerate(range(0, len(todo), 4)):
                part = todo[s:s + 4]
                ids, mask = gen.pad_left(gen.encode([prompts[ex[u].user_id] for u in part]))
                slots = [(r, u, j) for r, u in enumerate(part) for j in range(n) if cands[u, j] >= 0]
                pairs = [(r, list(gen.trie.tokens(int(cands[u, j])))) for r, u, j in slots]
                scored = gen.item_logprobs(ids, mask, pairs, gen.prefill(ids, mask))
                priors = gen.item_priors([int(cands[u, j]) for _, u, j in slots])
                for (_, u, j), (value, count), pr in zip(slots, scored, priors):
                    lp[u, j], ntok[u, j], prior[u, j] = value, count, pr
                for u in part:
                    kept.users[ex[u].user_id] = (cands[u].copy(), lp[u], ntok[u], prior[u])
                done = min(s + 4, len(todo))
                if b % 10 == 9 or done == len(todo):  # every 40 users, and at the end
                    kept.save(scores_file, meta)
                    print(f"{done} of {len(todo)} users scored, "
                          f"{(time.perf_counter() - t0) / done:.2f} s/user", flush=True)
    seconds = time.perf_counter() - t0
    target = np.array([e.target for e in ex])

    def top5_position(order: np.ndarray) -> np.ndarray:
        """Per user, where the target sits in the ordering's top 5 (0-4), or -1."""
        out = np.full(len(ex), -1)
        for u in range(len(ex)):
            where = np.nonzero(cands[u, order[u, :5]] == target[u])[0]
            out[u] = where[0] if len(where) else -1
        return out

    orders = orderings(lp, ntok, prior,
                       args.candidates_from.name if args.candidates_from is not None else "LIS")
    if args.test:
        return report_test(args, cfg, ds, ex, orders, top5_position, seconds, len(todo), before)
    pos = {name: top5_position(order) for name, order in orders.items()}
    recall = {name: at5(p)["recall@5"] for name, p in pos.items()}
    ndcg = {name: at5(p)["ndcg@5"] for name, p in pos.items()}
    reference = LIS_ORDER
    if args.candidates_from is not None:  # the run's list is not LIS's: LIS's own ranking is
        reference = "LIS-BM25 (its own ranking, same users)"
        recall[reference] = np.asarray(lis.per_user["recall@5"], dtype=float)
        ndcg[reference] = np.asarray(lis.per_user["ndcg@5"], dtype=float)
    ceiling = float(np.mean([target[u] in cands[u] for u in range(len(ex))]))
    # Paired bootstrap 95% CI of each ordering's R@5 minus LIS's, over users.
    ci = {name: paired_ci(h, recall[reference]) for name, h in recall.items()}
    per_user = seconds / len(todo) if todo else None
    speed = f" at {per_user:.2f} s/user" if per_user is not None else ""
    where = args.candidates_from or "LIS-BM25"
    print(f"{len(ex)} validation users (seed {args.seed}), {where} top {n} (R@{n} = {ceiling:.3f}), "
          f"{len(todo)} scored by this run{speed} (scores: {scores_file}); load average "
          f"{before['load_avg_1m']} before")
    print("| ordering | R@5 | R@5 - LIS, 95% CI | N@5 |")
    for name in recall:
        lo, hi = ci[name]
        print(f"| {name} | {recall[name].mean():.3f} | [{lo:+.3f}, {hi:+.3f}] | {ndcg[name].mean():.4f} |")
    write_results(args.json, {
        "adapter": str(args.adapter), "candidates": n, "users": len(ex), "seed": args.seed,
        "candidates_from": meta["candidates_from"], "reference": reference,
        "lis_recall_at_n": ceiling, "scored_by_this_run": len(todo), "s_per_user": per_user,
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
