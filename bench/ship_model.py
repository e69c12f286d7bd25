"""Copy a trained run's adapter into the package as a shipped model (glossrec/shipped/NAME).

What ships: adapter_model.safetensors + adapter_config.json (the weights, at most 25 MB),
glossrec_train.json (steps, examples seen), train_log.jsonl (the loss curve), config.toml (the
recipe: model, prompt, LoRA, training, generation and retrieval settings; no data path) and a
README.md that names the command reproducing it. Nothing else of the run (checkpoints,
optimizer state, generations) is copied.

  .venv/bin/python bench/ship_model.py --run runs/smollm2-beauty --name smollm2-beauty \
      --config configs/smollm2-beauty.toml [--adapter RUN/curve/step-N/adapter] \
      [--decode prior_weight=1.0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, code_version, machine  # noqa: E402

LIMIT_MB = 25
WEIGHTS = ("adapter_model.safetensors", "adapter_config.json", "glossrec_train.json")


def recipe_toml(config: Path, decode: dict[str, str] | None = None) -> str:
    """The config as resolved, minus what belongs to one machine (data path, run folder), with
    `decode` (generate.* settings chosen on validation users) as the model's serving default."""
    from glossrec.config import config_to_toml, load_config

    cfg = load_config(config, {f"generate.{k}": v for k, v in (decode or {}).items()})
    cfg = cfg.model_copy(update={"out": None, "data": cfg.data.model_copy(update={"path": None})})
    return config_to_toml(cfg)


def earlier_log(info: dict) -> list[dict]:
    """The training log records of the runs behind train.init_adapter (a shipped model or an
    adapter folder), each with its "run" number; [] for a run that started from scratch.

    A shipped name may since hold another model (this one, shipped before under the same name):
    its examples must be those this run started from, or the lineage would be wrong."""
    if not info.get("init_adapter"):
        return []
    from glossrec.weights import resolve_weights

    folder = resolve_weights(info["init_adapter"])
    path = folder / "train_log.jsonl"
    if not path.is_file():
        print(f"{folder} has no train_log.jsonl: the shipped log holds this run only",
              file=sys.stderr)
        return []
    start = json.loads((folder / "glossrec_train.json").read_text())["examples_seen_total"]
    if start != info["examples_seen_total"] - info["examples_seen"]:
        raise SystemExit(f"{folder}: holds a model trained on {start:,} examples, not the "
                         f"{info['examples_seen_total'] - info['examples_seen']:,} this run "
                         "started from (shipped over since?): its log is not this run's past")
    return [{"run": 0, **json.loads(x)} for x in path.read_text().splitlines() if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--command", action="append", default=None,
                   help="the command that reproduces the run (repeat it for a run continued "
                   "from train.init_adapter: the earlier runs' commands first)")
    p.add_argument("--adapter", type=Path, default=None,
                   help="the adapter to ship (default RUN/adapter), e.g. RUN/curve/step-N/adapter")
    p.add_argument("--decode", nargs="*", default=[], metavar="KEY=VALUE",
                   help="generate.* settings it is served with, as chosen on validation users "
                   "(e.g. prior_weight=1.0)")
    p.add_argument("--paused-s", type=float, default=0.0,
                   help="seconds this run's process was stopped (SIGSTOP) while other work ran: "
                   "the log's wall clock includes them, the training time stated does not")
    args = p.parse_args(argv)
    adapter = args.adapter or args.run / "adapter"
    decode = dict(kv.split("=", 1) for kv in args.decode)
    size = (adapter / "adapter_model.safetensors").stat().st_size / 2**20
    if size > LIMIT_MB:
        print(f"{adapter}: {size:.1f} MB, over the {LIMIT_MB} MB a shipped model may have",
              file=sys.stderr)
        return 2
    info = json.loads((adapter / "glossrec_train.json").read_text())
    # The run's log up to the shipped adapter's step (the run may have gone on), after the logs
    # of the runs its train.init_adapter came from: each record names its run (0 = the first).
    earlier = earlier_log(info)
    dest = ROOT / "src" / "glossrec" / "shipped" / args.name
    tmp = dest.with_name(f".{args.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in WEIGHTS:
        shutil.copy2(adapter / name, tmp / name)
    if args.paused_s:
        # A run continued from this model adds its time to train_seconds_total: keep the pause
        # out of it, and say how much was taken out.
        info = {**info, "train_seconds": round(info["train_seconds"] - args.paused_s, 1),
                "train_seconds_total": round(info["train_seconds_total"] - args.paused_s, 1),
                "paused_seconds_excluded": args.paused_s}
        (tmp / "glossrec_train.json").write_text(json.dumps(info, indent=1) + "\n")
    (tmp / "config.toml").write_text(recipe_toml(args.config, decode))
    this_run = 1 + max((r["run"] for r in earlier), default=-1)
    lines = [x for x in (args.run / "train_log.jsonl").read_text().splitlines() if x]
    log = [{"run": this_run, **r} for r in map(json.loads, lines) if r.get("step", 0) <= info["steps"]]
    (tmp / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier + log))
    seconds = max((r.get("seconds", 0.0) for r in log), default=0.0) - args.paused_s
    total = info["train_seconds_total"]
    paused = (f"; the log's clock also counts {args.paused_s / 60:.1f} min the run was paused"
              if args.paused_s else "")
    valid = "; ".join(
        f"run {k}: " + ", ".join(f"{r['step']}: {r['valid_loss']:.3f}" for r in earlier + log
                                 if r["run"] == k and "valid_loss" in r)
        for k in range(this_run + 1))
    commands = args.command or [f".venv/bin/python bench/learning_curve.py --config "
                                f"{args.config} --run {args.run} --points 0 ... {info['steps']}"]
    command = "\n  ".join(commands)
    m = machine()
    decode_note = (", served with " + ", ".join(f"generate.{k} = {v}" for k, v in decode.items())
                   + " as chosen on validation users" if decode else "")
    (tmp / "README.md").write_text(f"""# Shipped model: {args.name}

A LoRA adapter (r {json.loads((adapter / 'adapter_config.json').read_text())['r']}) for
`{info['model']}`, trained by glossrec on the full Amazon 2014 Beauty training sequences.

- Optimizer steps: {info['steps']}; training examples seen: {info['examples_seen_total']:,}
  (this run: {info['examples_seen']:,}); best validation step: {info['best_step']}.
- Training time: {total / 60:.1f} min in all ({seconds / 60:.1f} min in
  this run, on {m['cpu']}, {m['cores']} cores, CPU only{paused}).
- Validation loss (target tokens, 128 validation users) by step: {valid}.
- Recipe: `config.toml` here (copied from `{args.config}`{decode_note}); loss curve:
  `train_log.jsonl`.
- Reproduce (resumable; one command per run, in order):

  ```bash
  {command}
  ```

- Continue training from it in another run: `train.init_adapter = "{args.name}"`.
- Use it: `glossrec index --data DIR --out RUN --model {args.name}` then
  `glossrec recommend --run RUN ...` / `glossrec serve --run RUN`; Python:
  `Recommender.from_dataset(DIR, model="{args.name}")`.

Code version when shipped: {code_version()['commit']}.
""")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    print(f"shipped {dest} ({size:.1f} MB of weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
