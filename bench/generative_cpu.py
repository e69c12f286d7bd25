"""GLoSS with the embedded SmolLM2-135M on CPU vs Last-Item Search, on the SAME test users.

Runs (or resumes) `glossrec run configs/bench-cpu-beauty.toml`: LoRA fine-tuning on Beauty
training examples within a CPU budget, beam-search generation for a fixed random sample of test
users, retrieval and evaluation. Then scores, on exactly those users:

  GLoSS-135M  dense / BM25, paper ranking, with and without exclude-history,
              and the fused top-k variants (max, rrf) as the "what would close the gap" probes;
  LIS         BM25 / dense, with and without exclude-history;

with 95% bootstrap confidence intervals (users resampled) and per segment, plus diagnostics of
the generated texts (catalog titles, history copies, distinct beams) and a probe that generates
the first --newline-users users again with beams ended at the first newline. Prints a table and
writes bench/results/generative_cpu.json. Training and generation resume after a kill, so the
bench can run in the background and be restarted.

    .venv/bin/python bench/generative_cpu.py [--config configs/bench-cpu-beauty.toml] [--max-steps N] [--users N]
    # a shipped model under its own config.toml (recipe + the decoding it is served with), no
    # training; adds GLoSS - LIS paired differences (users resampled) per history rule:
    .venv/bin/python bench/generative_cpu.py --model smollm2-beauty
    # target-only loss probe (20 steps, 200 users):
    .venv/bin/python bench/generative_cpu.py --config configs/bench-cpu-beauty-target.toml \
        --newline-users 0 --json bench/results/generative_cpu--target-only.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.config import load_config
from glossrec.evaluate import SEGMENTS, bootstrap_ci
from glossrec.generate import read_generations
from glossrec.io import read_json
from glossrec.pipeline import build_index, load_data, prepare, run, run_lis, run_retrieve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, write_results  # noqa: E402


def text_diagnostics(examples: list, gens: dict[str, list[str]], catalog) -> dict[str, float]:
    """What the model writes, in numbers that explain the scores (exact, case-insensitive).

    catalog_title: top text is some catalog item's text (the model writes real titles);
    target_any_beam: one of the texts IS the target (an exact hit before retrieval);
    copies_history: top text is an item already in the user's history (LIS-like behaviour);
    distinct_per_user: distinct texts among the beams.
    """
    norm = {t.strip().lower(): i for i, t in enumerate(catalog.texts())}
    n = cat = hit = copy = 0
    distinct = 0.0
    for ex in examples:
        texts = [t.strip().lower() for t in gens.get(ex.user_id, [])]
        if not texts:
            continue
        n += 1
        cat += texts[0] in norm
        hit += any(norm.get(t) == ex.target for t in texts)
        copy += norm.get(texts[0], -1) in set(ex.history)
        distinct += len(set(texts))
    return {"users": n, "catalog_title": round(cat / n, 4), "target_any_beam": round(hit / n, 4),
            "copies_history": round(copy / n, 4), "distinct_per_user": round(distinct / n, 2)}


def newline_probe(cfg, ds, examples: list, run_dir: Path, n: int) -> dict[str, list[str]]:
    """Generate (resumably) the first `n` bench users again with generate.stop_at_newline.

    Why: a briefly fine-tuned model writes the title, a newline, then more lines; the paper's
    beams compete on all 50 tokens, so after cutting at the first line the 5 texts are often
    one text 5 times. Ending beams at the newline makes them 5 different first lines.
    """
    from glossrec.generate import generate_examples

    ncfg = cfg.updated(generate={"stop_at_newline": True, "workers": 1})
    out = run_dir / "generations.newline.jsonl"
    generate_examples(ncfg, examples[:n], ds.catalog, run_dir / "adapter", out)
    every = read_generations(out)
    return {e.user_id: every[e.user_id] for e in examples[:n]}


def metric_row(name: str, ev, keep: set[str] | None = None) -> dict:
    """Means with 95% bootstrap CIs over the evaluated users (or only those in `keep`)."""
    mask = np.array([keep is None or u in keep for u in ev.user_ids], dtype=bool)
    row = {"run": name, "users": int(mask.sum())}
    for m in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"):
        vals = ev.per_user[m][mask]
        row[m] = float(vals.mean())
        row[m + "_ci95"] = list(bootstrap_ci(vals))
    return row


def _fmt(r: dict) -> str:
    return (f"{r['recall@5']:.4f} [{r['recall@5_ci95'][0]:.4f},{r['recall@5_ci95'][1]:.4f}] "
            f"{r['ndcg@5']:.4f} [{r['ndcg@5_ci95'][0]:.4f},{r['ndcg@5_ci95'][1]:.4f}]")


def paired_rows(variants: dict, kinds: tuple[str, ...] = ("bm25", "dense")) -> list[dict]:
    """GLoSS - LIS per user, same retriever and history rule: the mean difference and its
    paired bootstrap 95% CI (users resampled, both runs' values kept together). "beats" holds
    when the CI lies above 0."""
    out = []
    for kind in kinds:
        for excl in (False, True):
            tag = " +excl" if excl else ""
            g, lis = variants[f"GLoSS-135M {kind}{tag}"], variants[f"LIS {kind}{tag}"]
            assert list(g.user_ids) == list(lis.user_ids), "paired rows need the same users"
            row = {"retriever": kind, "history": "excluded" if excl else "kept"}
            for m in ("recall@5", "ndcg@5"):
                diff = g.per_user[m] - lis.per_user[m]
                lo, hi = bootstrap_ci(diff)
                row[m] = {"gloss": float(g.per_user[m].mean()), "lis": float(lis.per_user[m].mean()),
                          "diff": float(diff.mean()), "diff_ci95": [lo, hi], "beats": lo > 0}
            out.append(row)
    return out


def shipped_config_for(name: str, data: Path, overrides: dict) -> Any:
    """The shipped model's own config.toml (its recipe and serving decoding) on `data`, with
    model.weights = name: `glossrec run` then generates with it and trains nothing."""
    from glossrec.errors import ConfigError
    from glossrec.rundir import shipped_config

    path = shipped_config(name)
    if path is None:
        raise ConfigError(f"{name!r} is not a shipped model (no config.toml)")
    return load_config(path, {"data.path": str(data), "model.weights": name, **overrides})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "bench-cpu-beauty.toml"))
    ap.add_argument("--model", default=None, help="a shipped model's name: evaluate it under its "
                    "own config (no training); run folder runs/bench-shipped-NAME unless --out")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/amazon2014/beauty",
                    help="the dataset of --model")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                    help="config overrides, e.g. generate.workers=2")
    ap.add_argument("--out", default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--newline-users", type=int, default=200,
                    help="probe: the first N users again with stop_at_newline (0: skip)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "generative_cpu.json"))
    args = ap.parse_args()
    before = machine()

    overrides = {"train.max_steps": args.max_steps, "evaluate.users": args.users,
                 **dict(kv.split("=", 1) for kv in args.set)}
    if args.model:
        cfg = shipped_config_for(args.model, args.data, overrides)
        args.out = args.out or str(ROOT / "runs" / f"bench-shipped-{args.model}")
        args.config = f"shipped:{args.model}"
        args.newline_users = 0  # grounded beams end at an item's EOS: no newline to stop at
    else:
        cfg = load_config(args.config, overrides)
    t0 = time.perf_counter()
    run(cfg, args.out, score=False)
    run_dir = Path(args.out or cfg.out).resolve()
    cfg = cfg.model_copy(update={"out": run_dir})
    ds = load_data(cfg)
    examples = prepare(cfg, ds).examples
    every = read_generations(run_dir / "generations.jsonl")
    gens = {e.user_id: every[e.user_id] for e in examples if e.user_id in every}
    newline = newline_probe(cfg, ds, examples, run_dir, args.newline_users) if args.newline_users else {}
    variants, probe = {}, {}
    for kind in ("dense", "bm25"):
        kcfg = cfg.updated(retrieve={"retriever": kind})
        index = build_index(kcfg, ds)
        for excl in (False, True):
            tag = " +excl" if excl else ""
            ecfg = kcfg.updated(retrieve={"retriever": kind, "exclude_history": excl})
            variants[f"GLoSS-135M {kind}{tag}"] = run_retrieve(ecfg, gens, None, ds, index)
            variants[f"LIS {kind}{tag}"] = run_lis(ecfg, None, ds, index)
        for fusion in ("max", "rrf"):
            fcfg = kcfg.updated(retrieve={"retriever": kind, "ranking": fusion, "per_text_k": 20})
            variants[f"GLoSS-135M {kind} {fusion}-fusion"] = run_retrieve(fcfg, gens, None, ds, index)
        if newline:
            probe[f"GLoSS-135M {kind} newline"] = run_retrieve(kcfg, newline, None, ds, index)
            probe[f"GLoSS-135M {kind} newline max-fusion"] = run_retrieve(
                kcfg.updated(retrieve={"retriever": kind, "ranking": "max", "per_text_k": 20}),
                newline, None, ds, index)

    diagnostics = text_diagnostics(examples, gens, ds.catalog)
    users = {tuple(ev.user_ids) for ev in variants.values()}
    assert len(users) == 1, "every row must be scored on the same users"
    n_users = len(next(iter(users)))
    manifest = read_json(run_dir / "manifest.json")
    train_info = manifest["stages"].get("train", {})
    rows = []
    for name, ev in variants.items():
        row = metric_row(name, ev)
        for seg in SEGMENTS:
            row[seg] = {"users": ev.metrics[seg]["users"], "recall@5": ev.metrics[seg]["recall@5"],
                        "ndcg@5": ev.metrics[seg]["ndcg@5"]}
        rows.append(row)

    result = train_info.get("result", {})
    hist = [h for h in result.get("history", []) if "loss" in h]
    valid = [(h["step"], round(h["valid_loss"], 4)) for h in result.get("history", []) if "valid_loss" in h]
    steps = result.get("steps")
    train_summary = {
        "steps": steps, "examples_seen": steps * cfg.train.batch_size * cfg.train.grad_accum if steps else None,
        "seconds": train_info.get("seconds"),
        "first_loss": round(hist[0]["loss"], 4) if hist else None,
        "last5_mean_loss": round(sum(h["loss"] for h in hist[-5:]) / len(hist[-5:]), 4) if hist else None,
        "valid_loss": valid}
    if args.model:  # no training in this run: the shipped model's own record
        from glossrec.weights import resolve_weights

        info = read_json(resolve_weights(args.model) / "glossrec_train.json")
        train_summary = {"shipped": args.model, "steps": info["steps"],
                         "examples_seen": info["examples_seen_total"],
                         "seconds": info["train_seconds_total"]}
    print(f"\nBeauty, {n_users} fixed random test users (seed {cfg.evaluate.user_seed}); "
          f"training: {train_summary}")
    print("generated texts: " + ", ".join(f"{k} {v}" for k, v in diagnostics.items()))
    print(f"{'run':34} {'R@5':>7} {'95% CI':>17} {'N@5':>7} {'95% CI':>17}   "
          + "  ".join(f"{s} R@5/N@5" for s in SEGMENTS))
    for r in rows:
        seg = "  ".join(f"{r[s]['recall@5']:.4f}/{r[s]['ndcg@5']:.4f}" for s in SEGMENTS)
        print(f"{r['run']:34} {_fmt(r)}   {seg}")
    paired = paired_rows(variants)
    print("\nGLoSS - LIS, same users, retriever and history rule (paired bootstrap 95% CI):")
    for r in paired:
        print(f"  {r['retriever']:5} history {r['history']:8} " + "  ".join(
            f"{m} {r[m]['gloss']:.4f} - {r[m]['lis']:.4f} = {r[m]['diff']:+.4f} "
            f"[{r[m]['diff_ci95'][0]:+.4f},{r[m]['diff_ci95'][1]:+.4f}]"
            f"{' beats' if r[m]['beats'] else ''}" for m in ("recall@5", "ndcg@5")))
    probe_rows, nl_diag = [], None
    if newline:
        keep = set(newline)
        probe_rows = [metric_row(name, variants[name], keep) for name in
                      ("GLoSS-135M dense", "GLoSS-135M bm25", "GLoSS-135M dense max-fusion",
                       "LIS bm25", "LIS dense")]
        probe_rows += [metric_row(name, ev, keep) for name, ev in probe.items()]
        nl_diag = text_diagnostics(examples[:args.newline_users], newline, ds.catalog)
        print(f"\nProbe: the first {len(keep)} of these users, beams ended at the first newline "
              f"(generate.stop_at_newline); generated texts: "
              + ", ".join(f"{k} {v}" for k, v in nl_diag.items()))
        for r in probe_rows:
            print(f"{r['run']:40} {_fmt(r)}")
    write_results(Path(args.json), {"config": str(args.config), "run_dir": str(run_dir),
                                 "users": n_users, "train": train_summary,
                                 "diagnostics": diagnostics,
                                 "generate": manifest["stages"].get("generate", {}),
                                 "wall_s": round(time.perf_counter() - t0, 1), "rows": rows,
                                 "paired": paired,
                                 "newline_probe": {"rows": probe_rows, "diagnostics": nl_diag}},
                  before)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
