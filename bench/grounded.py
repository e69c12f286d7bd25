"""Free-text vs catalog-grounded beam search on CPU: cost per user, peak memory, and quality.

Users: glossrec's own ``pipeline.prepare`` on the Beauty validation split with evaluate.users = N and
evaluate.user_seed = 0; model: the embedded SmolLM2-135M (``--adapter DIR`` for a trained one);
the paper's generation settings (5 beams, 5 returned). Arms, each in its own subprocess so peak
RSS and warm caches are not shared:

- ``free``: the paper, free text (then BM25 top-1 per text);
- ``grounded``: ``generate.constrain = "catalog"``, history excluded, beam order;
- ``grounded-pmi`` / ``grounded-length``: the same beams re-ranked by one teacher-forced pass;
- ``grounded-prior``: the search itself scores tokens against the empty-history prior
  (``generate.prior_weight = 1.0``; the prior's KV cache is extended one token per step).
- ``grounded-tf`` / ``grounded-prior-tf``: ``grounded`` / ``grounded-prior`` run in
  transformers' generate loop (``generate.grounded_search = "transformers"``) instead of
  glossrec's; the table gives the share of users whose lists the two loops agree on.
- ``grounded-copied`` / ``grounded-prior-copied``: glossrec's loop with one copy of the prompt's
  KV per row (``HFGenerator.shared_prompts = False``, the loop before each prompt's KV was kept
  once); the table gives the share of users given the same lists.
- ``grounded-prior-table``: ``grounded-prior`` with the prior read from a table made once per
  model and catalog (``generate.prior_table``); the table's making is timed apart (``table_s``,
  one row per catalog token), and the share of users given ``grounded-prior``'s lists is
  reported.

``--one-process`` runs every arm in one worker process, the model loaded once (the arms must
differ only in generator attributes, e.g. ``grounded-prior,grounded-prior-copied``), each arm
``--rounds`` times in turn, so that a busy machine slows every arm alike: compare their CPU
s/user.

Per glossrec-loop arm, a FLOP bound: the searches count the tokens they run (prefill tokens,
beam rows, prior rows) and the keys attention reads; FLOPs = 2 x non-embedding parameters per
token + 2 x vocabulary x hidden per row projected onto the vocabulary + 4 x layers x heads x
head dim per key read, and the bound is FLOPs / the machine's matmul rate at --threads
(``_common.matmul_flops``, measured once before the arms). The table gives GFLOP/user, the
bound s/user and s/user over the bound (``--bf16``: generate.bf16 in every arm, and the bf16
matmul rate); on a busy machine, CPU s/user over the CPU-time bound
(the same FLOPs at the matmul rate per CPU second) is the comparable figure.

Per arm: generation s/user and CPU s/user, load time (model, and for grounded arms the trie),
peak RSS during generation and RSS after loading, the effective max_new_tokens, and quality on
the same users: BM25 Recall/NDCG@5 with history excluded (every arm's texts go through
retrieval, as in the pipeline), the share of users whose target text is among their texts, and
the share of texts that are history items.

Run from the repo root:  .venv/bin/python bench/grounded.py [--users 50] [--adapter DIR]
Writes bench/results/grounded.json (git commit, load average, date) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, matmul_flops, print_columns, reset_peak_rss, rss_mb  # noqa: E402
ARMS: dict[str, dict[str, Any]] = {
    "free": {"constrain": "none"},
    "grounded": {"constrain": "catalog", "grounded_score": "beam"},
    "grounded-pmi": {"constrain": "catalog", "grounded_score": "pmi"},
    "grounded-length": {"constrain": "catalog", "grounded_score": "length"},
    "grounded-prior": {"constrain": "catalog", "grounded_score": "beam", "prior_weight": 1.0},
    # The same searches in transformers' generate loop (the grounded arms above run glossrec's)
    "grounded-tf": {"constrain": "catalog", "grounded_score": "beam",
                    "grounded_search": "transformers"},
    "grounded-prior-tf": {"constrain": "catalog", "grounded_score": "beam", "prior_weight": 1.0,
                          "grounded_search": "transformers"},
    # glossrec's loop with one KV copy of the prompt per row (generator attribute below)
    "grounded-copied": {"constrain": "catalog", "grounded_score": "beam"},
    "grounded-prior-copied": {"constrain": "catalog", "grounded_score": "beam",
                              "prior_weight": 1.0},
}
ARMS["grounded-prior-table"] = ARMS["grounded-prior"]
GENERATOR: dict[str, dict[str, Any]] = {"grounded-copied": {"shared_prompts": False},
                                        "grounded-prior-copied": {"shared_prompts": False},
                                        "grounded-prior-table": {"prior_table": True}}
"""Arm -> HFGenerator attributes (or, for "prior_table", its generate setting) set after
loading; the other arms get the loaded generator's."""
SAME_SEARCH = {"tf": {"grounded": "grounded-tf", "grounded-prior": "grounded-prior-tf"},
               "copied": {"grounded": "grounded-copied", "grounded-prior": "grounded-prior-copied"},
               "rows": {"grounded-prior-table": "grounded-prior"}}
"""Arm -> the arm running the same search in transformers' loop, or with one KV copy per row:
the share of users given the same list by both is reported."""
log = logging.getLogger("bench.grounded")


def make_config(args: argparse.Namespace, arm: str) -> Any:
    from glossrec.config import EMBEDDED_LLM, load_config

    return load_config(None, {
        "data": {"path": str(args.data)},
        "model": {"name": EMBEDDED_LLM},
        "generate": {"batch_size": args.batch_size, "bf16": args.bf16, **ARMS[arm]},
        "retrieve": {"retriever": "bm25", "exclude_history": True},
        "prompt": {"max_history_items": args.max_history_items},
        # Validation users: quality figures here may inform choices, so never test users.
        "evaluate": {"split": "valid", "users": args.users, "user_seed": 0},
    })


# --- worker: one arm -------------------------------------------------------------------------


def worker(job_path: Path, out_path: Path) -> None:
    """Run the job's arms (one, or several sharing a config) on the same prompts."""
    job = json.loads(job_path.read_text())
    import torch

    torch.set_num_threads(job["threads"])
    from glossrec.config import RunConfig
    from glossrec.generate import make_generator
    from glossrec.generate.search import SearchWork
    from glossrec.pipeline import prepare
    from glossrec.prompts import test_prompts

    cfg = RunConfig.model_validate(job["cfg"])
    prep = prepare(cfg)
    cat = prep.dataset.catalog
    grounded = cfg.generate.constrain == "catalog"
    adapter = Path(job["adapter"]) if job["adapter"] else None
    t0 = time.perf_counter()
    gen: Any = make_generator(cfg, adapter, cat.texts() if grounded else None)
    if grounded:
        gen.prior_prompt_ids()  # the empty-history prompt's KV: made once per model
    load_s = time.perf_counter() - t0
    loaded_rss = rss_mb("VmRSS")
    examples = prep.examples[:job["first"]]
    prompts = test_prompts(examples, cat, gen.tokenizer, cfg.prompt,
                           reserve=cfg.generate.max_new_tokens)
    exclude = [list(ex.history) for ex in examples] if grounded else None
    trie = getattr(gen, "trie", None)
    out: dict[str, Any] = {}
    loaded = {"shared_prompts": gen.shared_prompts, "cfg": gen.cfg}
    if job.get("prior_table_file") and grounded:  # a table kept between runs of the bench
        from glossrec.fingerprint import prior_table_inputs

        gen.prior_table_file = Path(job["prior_table_file"])
        gen.prior_table_meta.update(prior_table_inputs(cfg, adapter))
    table_s = None
    for _ in range(job["rounds"]):
        for arm in job["arms"]:
            attrs = {**loaded, **GENERATOR.get(arm, {})}
            if attrs.pop("prior_table", False):
                attrs["cfg"] = gen.cfg.model_copy(update={"prior_table": True})
            for name, value in attrs.items():
                setattr(gen, name, value)
            if gen.cfg.prior_table and table_s is None:  # made once, timed apart
                t0 = time.perf_counter()
                gen.prior_table()
                table_s = time.perf_counter() - t0
            gen.work = SearchWork()
            reset_peak_rss()
            t0, c0 = time.perf_counter(), time.process_time()
            texts = gen.generate([p for _, p in prompts], exclude)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            res = out.setdefault(arm, {
                "users": len(prompts), "wall_s": 0.0, "cpu_s": 0.0, "load_s": load_s,
                "peak_rss_mb": 0.0, "loaded_rss_mb": loaded_rss,
                "max_new_tokens": gen.max_new_tokens(),
                "trie": {"items": len(trie), "nodes": trie.nodes, "max_tokens": trie.max_tokens}
                if trie is not None else None,
                "texts": {uid: t for (uid, _), t in zip(prompts, texts)},
                "work": dataclasses.asdict(gen.work) if grounded else None,
                "table_s": table_s if gen.cfg.prior_table else None,
                "model": model_dims(gen.model), "rounds": 0})
            res["wall_s"] += wall
            res["cpu_s"] += cpu
            res["rounds"] += 1
            res["peak_rss_mb"] = max(res["peak_rss_mb"], rss_mb("VmHWM"))
            log.info("%s: %.2f s/user (CPU %.2f)", arm, wall / len(prompts), cpu / len(prompts))
    for res in out.values():  # per round
        res["wall_s"] /= res["rounds"]
        res["cpu_s"] /= res["rounds"]
    out_path.write_text(json.dumps(out))


def model_dims(model: Any) -> dict[str, int]:
    """What the FLOP count needs of a causal LM: its non-embedding parameters and shape."""
    config = model.config.get_text_config(decoder=True)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    params = {p.data_ptr(): p.numel() for p in model.parameters()}
    body = sum(params.values()) - embed.numel() - (head.numel() if head.data_ptr() in params
                                                   and head.data_ptr() != embed.data_ptr() else 0)
    heads = config.num_attention_heads
    return {"body_params": body, "vocab": head.shape[0], "hidden": config.hidden_size,
            "layers": config.num_hidden_layers, "heads": heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads}


def search_flops(work: dict[str, int], dims: dict[str, int]) -> float:
    """FLOPs of what glossrec's searches ran (see the module docstring)."""
    tokens = work["prefill_tokens"] + work["beam_rows"] + work["prior_rows"]
    logits = work["beam_rows"] + work["prior_rows"] + work["logit_rows"]
    keys = work["prefill_keys"] + work["step_keys"]
    return (2 * dims["body_params"] * tokens + 2 * dims["vocab"] * dims["hidden"] * logits
            + 4 * dims["layers"] * dims["heads"] * dims["head_dim"] * keys)


# --- driver ----------------------------------------------------------------------------------


def run_arms(arms: list[str], args: argparse.Namespace, tmp: Path, rounds: int = 1
             ) -> dict[str, dict[str, Any]]:
    """`arms` in one worker process (they share a config), each `rounds` times in turn."""
    configs = {json.dumps(make_config(args, arm).model_dump(mode="json"), sort_keys=True)
               for arm in arms}
    if len(configs) > 1:
        raise SystemExit(f"arms {arms} differ in more than generator attributes: run them "
                         "without --one-process")
    name = "+".join(arms)
    job, out = tmp / f"{name}.job.json", tmp / f"{name}.out.json"
    job.write_text(json.dumps({"cfg": make_config(args, arms[0]).model_dump(mode="json"),
                               "arms": arms, "rounds": rounds,
                               "adapter": str(args.adapter) if args.adapter else None,
                               "threads": args.threads, "first": args.first,
                               "prior_table_file": str(args.prior_table_file)
                               if args.prior_table_file else None}))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(job),
                           str(out)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"arm(s) {name} failed (exit {proc.returncode})")
    res: dict[str, dict[str, Any]] = json.loads(out.read_text())
    log.info("%s: %.0f s in all", name, time.perf_counter() - t0)
    return res


def quality(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """BM25 (history excluded) metrics of every arm's texts, plus exact-text diagnostics."""
    from glossrec.pipeline import build_index, prepare, run_retrieve

    cfg = make_config(args, "free")
    prep = prepare(cfg)
    prep.examples = prep.examples[:args.first]
    cat = prep.dataset.catalog
    index = build_index(cfg, prep.dataset)
    out: dict[str, dict[str, float]] = {}
    for arm, res in results.items():
        texts: dict[str, list[str]] = res["texts"]
        ev = run_retrieve(cfg, texts, ds=prep.dataset, retriever=index, source=arm)
        n_texts = sum(len(t) for t in texts.values()) or 1
        target_in = sum(cat.text(ex.target) in texts[ex.user_id] for ex in prep.examples)
        in_hist = sum(t in {cat.text(i) for i in ex.history}
                      for ex in prep.examples for t in texts[ex.user_id])
        out[arm] = {"recall@5": ev.metrics["overall"]["recall@5"],
                    "ndcg@5": ev.metrics["overall"]["ndcg@5"],
                    "target_text_in_texts": target_in / len(prep.examples),
                    "texts_from_history": in_hist / n_texts,
                    "texts_per_user": n_texts / len(prep.examples)}
    return out


def git_commit() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def summarize(args: argparse.Namespace, results: dict[str, dict[str, Any]],
              qual: dict[str, dict[str, float]], load: list[list[float]],
              rates: dict[str, float]) -> dict[str, Any]:
    """One row per arm; `rates`: fp32 matmul FLOP/s per wall second ("wall") and per CPU
    second ("cpu")."""
    from glossrec.generate.store import read_generations

    reference = read_generations(args.reference) if args.reference else None
    rows = []
    for arm, r in results.items():
        n = r["users"]
        same = {}
        for what, pairs in SAME_SEARCH.items():
            other = results.get(pairs.get(arm, ""))
            same[what] = (None if other is None else
                          sum(t == other["texts"].get(u) for u, t in r["texts"].items()) / n)
        in_ref = [u for u in r["texts"] if reference is not None and u in reference]
        same_ref = (sum(r["texts"][u] == reference[u] for u in in_ref) / len(in_ref)  # type: ignore[index]
                    if in_ref else None)
        flops = search_flops(r["work"], r["model"]) / n if r.get("work") else None
        bound = flops / rates["wall"] if flops else None
        cpu_bound = flops / rates["cpu"] if flops else None
        rows.append({"arm": arm, **ARMS[arm], **GENERATOR.get(arm, {}), "users": n,
                     "s_per_user": r["wall_s"] / n,
                     "same_lists_as_tf": same["tf"], "same_lists_as_copied": same["copied"],
                     "same_lists_as_prior_rows": same["rows"], "table_s": r.get("table_s"),
                     "same_lists_as_reference": same_ref, "reference_users": len(in_ref),
                     "cpu_s_per_user": r["cpu_s"] / n, "load_s": r["load_s"],
                     "peak_rss_mb": r["peak_rss_mb"], "loaded_rss_mb": r["loaded_rss_mb"],
                     "max_new_tokens": r["max_new_tokens"], "trie": r["trie"],
                     "work": r.get("work"), "gflop_per_user": flops / 1e9 if flops else None,
                     "bound_s_per_user": bound,
                     "over_bound": r["wall_s"] / n / bound if bound else None,
                     "cpu_bound_s_per_user": cpu_bound,
                     "cpu_over_bound": r["cpu_s"] / n / cpu_bound if cpu_bound else None,
                     **qual[arm]})
    return {
        "what": "HF beam search (5 beams, 5 returned), embedded SmolLM2-135M, Beauty validation users "
                "(pipeline.prepare, evaluate.users, seed 0), free text vs catalog-grounded, CPU",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_commit(), "loadavg_before_after": load, "cpus": os.cpu_count(),
        "threads": args.threads, "batch_size": args.batch_size, "users": args.users,
        "first": args.first, "reference": str(args.reference) if args.reference else None,
        "one_process": args.one_process, "rounds": args.rounds,
        "bf16": args.bf16, "matmul_dtype": "bf16" if args.bf16 else "fp32",
        "matmul_gflops": rates["wall"] / 1e9, "matmul_gflops_per_cpu_s": rates["cpu"] / 1e9,
        "adapter": str(args.adapter) if args.adapter else None, "data": str(args.data),
        "rows": rows,
        "texts": {arm: dict(list(r["texts"].items())[:3]) for arm, r in results.items()},
    }


def print_table(summary: dict[str, Any]) -> None:
    cols = [("arm", "arm", "{}"), ("users", "users", "{}"), ("s/user", "s_per_user", "{:.2f}"),
            ("cpu s/user", "cpu_s_per_user", "{:.2f}"), ("load s", "load_s", "{:.1f}"),
            ("peak RSS MB", "peak_rss_mb", "{:.0f}"), ("loaded MB", "loaded_rss_mb", "{:.0f}"),
            ("new tok", "max_new_tokens", "{}"), ("R@5", "recall@5", "{:.4f}"),
            ("N@5", "ndcg@5", "{:.4f}"), ("target in texts", "target_text_in_texts", "{:.3f}"),
            ("from history", "texts_from_history", "{:.3f}"), ("texts/user", "texts_per_user", "{:.1f}"),
            ("same lists as -tf", "same_lists_as_tf", "{:.3f}"),
            ("same lists as -copied", "same_lists_as_copied", "{:.3f}"),
            ("same lists as prior rows", "same_lists_as_prior_rows", "{:.3f}"),
            ("table s", "table_s", "{:.0f}"),
            ("same lists as reference", "same_lists_as_reference", "{:.3f}"),
            ("GFLOP/user", "gflop_per_user", "{:.1f}"), ("bound s/user", "bound_s_per_user", "{:.2f}"),
            ("s/user / bound", "over_bound", "{:.2f}"),
            ("CPU s / CPU bound", "cpu_over_bound", "{:.2f}")]
    print_columns(summary["rows"], cols)
    print(f"\n{summary['users']} users, {summary['threads']} thread(s), batch {summary['batch_size']}, "
          f"{summary['matmul_dtype']} matmul {summary['matmul_gflops']:.1f} GFLOP/s "
          f"({summary['matmul_gflops_per_cpu_s']:.1f} per CPU second), "
          f"{'one process, ' + str(summary['rounds']) + ' round(s), ' if summary['one_process'] else ''}"
          f"load average before/after {summary['loadavg_before_after']} on {summary['cpus']} CPUs, "
          f"commit {summary['git']['commit'][:10]}{' (dirty)' if summary['git']['dirty'] else ''}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/amazon2014/beauty")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--max-history-items", type=int, default=None,
                    help="prompt.max_history_items (None: every item that fits, the paper)")
    ap.add_argument("--adapter", type=Path, default=None, help="a trained LoRA adapter folder")
    ap.add_argument("--arms", default="free,grounded,grounded-pmi",
                    help=f"comma-separated, of: {', '.join(ARMS)}")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per arm (1: this 2-core machine is shared)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--one-process", action="store_true",
                    help="every arm in one worker process, the model loaded once (see above)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --one-process: run the arms this many times in turn")
    ap.add_argument("--first", type=int, default=None,
                    help="only the first K users of the --users sample (so that a stored run of "
                         "--users users is a reference)")
    ap.add_argument("--reference", type=Path, default=None,
                    help="a generations.jsonl made earlier (e.g. by the loop before a change, "
                         "same users, model and settings): the share of users given the same "
                         "list is reported")
    ap.add_argument("--prior-table-file", type=Path, default=None,
                    help="keep the grounded-prior-table arm's table here between runs (its "
                         "making is then timed only when the file lacks items)")
    ap.add_argument("--bf16", action="store_true",
                    help="generate.bf16 in every arm (bf16 weights; on CPUs with native bf16): "
                         "the bound then divides by the bf16 matmul rate")
    ap.add_argument("--save-texts", type=Path, default=None,
                    help="write each arm's texts here as ARM.jsonl (a later run's --reference)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/grounded.json")
    ap.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.worker:
        worker(*args.worker)
        return 0
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")

    from glossrec.io import write_json

    load = [list(os.getloadavg())]
    log.info("%d users, arms %s", args.users, ", ".join(arms))
    rates = {"wall": matmul_flops(args.threads, args.bf16),
             "cpu": matmul_flops(args.threads, args.bf16, clock=time.process_time)}
    log.info("%s matmul rate at %d thread(s): %.1f GFLOP/s, %.1f per CPU second",
             "bf16" if args.bf16 else "fp32", args.threads, rates["wall"] / 1e9, rates["cpu"] / 1e9)
    with tempfile.TemporaryDirectory(prefix="glossrec-bench-grounded-") as tmp:
        if args.one_process:
            results = run_arms(arms, args, Path(tmp), args.rounds)
        else:
            results = {arm: run_arms([arm], args, Path(tmp))[arm] for arm in arms}
    load.append(list(os.getloadavg()))
    summary = summarize(args, results, quality(args, results), load, rates)
    write_json(args.out, summary)
    if args.save_texts:
        from glossrec.generate.store import write_generations

        for arm, res in results.items():
            write_generations(args.save_texts / f"{arm}.jsonl", list(res["texts"].items()))
    print_table(summary)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
