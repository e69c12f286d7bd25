"""CPU generation: N Ray replicas (glossrec.generate.distributed, cores split between them) vs
one process on all cores.

Runs the real stage (`glossrec.generate.generate_examples`, paper beams) for the same test users
of a run directory, once per worker count, and reports users/s, the speed-up over one process
and whether the texts are identical. Wall time includes starting a local Ray and loading the
model (once per replica), as a user pays it. A 135M model decodes overhead-bound on a CPU (small matmuls, many kernel
launches per token), so processes are expected to scale better than threads.

Run from the repo root, after training (the adapter makes beams end at EOS, as in the bench):

    .venv/bin/python bench/generation_workers.py --run runs/bench-cpu-beauty --users 32

Writes bench/results/generation_workers.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import os
import tempfile
import time
from pathlib import Path

from glossrec.config import load_config
from glossrec.data import load_dataset
from glossrec.generate import generate_examples, read_generations
from glossrec.splits import make_splits, sample_users

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-cpu-beauty")
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1, help="user sample seed (not the bench's 0)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "generation_workers.json")
    args = ap.parse_args()
    before = machine()

    cfg = load_config(args.run / "config.toml")
    assert cfg.data.path is not None
    ds = load_dataset(cfg.data.path, cfg.data.item_format, cfg.data.title_words)
    examples = sample_users(make_splits(ds, cfg.split).get("test"), args.users, args.seed)
    adapter = args.run / "adapter"
    adapter_dir = adapter if (adapter / "adapter_config.json").is_file() else None
    cores = len(os.sched_getaffinity(0))

    rows, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for w in (int(x) for x in args.workers.split(",")):
            wcfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"workers": w})})
            out = Path(tmp) / f"workers{w}.jsonl"
            t0 = time.perf_counter()
            generate_examples(wcfg, examples, ds.catalog, adapter_dir, out)
            wall = time.perf_counter() - t0
            texts = read_generations(out)
            first = first or texts
            rows.append({"workers": w, "threads_per_worker": max(1, cores // w),
                         "users": len(examples), "wall_s": round(wall, 1),
                         "users_per_s": round(len(examples) / wall, 4),
                         "identical_texts_users": sum(texts[u] == first[u] for u in first)})
    base = rows[0]["users_per_s"]
    for r in rows:
        r["speedup"] = round(r["users_per_s"] / base, 2)

    print(f"\n{len(examples)} Beauty test users, {cores} cores, adapter: {adapter_dir}, "
          f"batch {cfg.generate.batch_size}, beams {cfg.generate.num_beams}")
    print(f"{'workers':>7} {'threads':>7} {'wall s':>8} {'users/s':>8} {'speed-up':>8} {'same texts':>10}")
    for r in rows:
        print(f"{r['workers']:>7} {r['threads_per_worker']:>7} {r['wall_s']:>8} "
              f"{r['users_per_s']:>8.3f} {r['speedup']:>7.2f}x "
              f"{r['identical_texts_users']:>5}/{r['users']}")
    write_results(args.json, {"run": str(args.run), "cores": cores, "adapter": str(adapter_dir),
                              "batch_size": cfg.generate.batch_size, "rows": rows}, before)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
