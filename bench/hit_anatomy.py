"""Where GLoSS and Last-Item Search find their targets: continuations of the last item's brand
against everything else, and what the two lists interleaved keep of each.

A Beauty title usually begins with its brand, so "the target's title starts with the same word
as the last history item's" is a cheap proxy for a same-brand continuation. For each run
directory (a `glossrec run` with its `lis-bm25/` beside it, the same users and targets), this
splits the users by that proxy and counts, for GLoSS and for LIS:

- hits in the top 5 in each part (and both lists' shared hits);
- the same for the two lists interleaved as `hybrid.fusion = "interleave"` does it (per block of
  5 places, LIS's best 2 then GLoSS's best 3 not yet listed; `--slots`), with its Recall@5 and
  NDCG@5 and their paired bootstrap 95% CIs against LIS's;
- how often the top item, and the top 5 on average, start with the last item's first word;
- the median popularity (purchases before each user's last two items) of the recommended items
  and of the targets.

It reads rankings only, so it costs seconds.

    .venv/bin/python bench/hit_anatomy.py runs/valid500-wholetext-h20-7 [RUN ...] \\
        [--slots 2 3] [--json bench/results/hit_anatomy.json]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_results  # noqa: E402


def first_word(title: str) -> str:
    words = title.split()
    return words[0].lower() if words else ""


@functools.cache
def _dataset(path: str, item_format: str, title_words: int) -> Any:
    """One load per dataset, however many run directories name it."""
    from glossrec.data import load_dataset

    return load_dataset(path, item_format, title_words)


def _padded(rows: list[list[int]]) -> np.ndarray:
    """[users, longest list] catalog positions, -1 padding: the shape ``glossrec.hybrid.Lists``
    and ``glossrec.evaluate.target_ranks`` take."""
    out = np.full((len(rows), max(1, max(map(len, rows), default=1))), -1, dtype=np.int64)
    for u, row in enumerate(rows):
        out[u, :len(row)] = row
    return out


def interleaved(lis: np.ndarray, gloss: np.ndarray, slots: tuple[int, int], k: int) -> np.ndarray:
    """[users, k] catalog positions: each user's LIS and GLoSS lists interleaved by the owner of
    the rule (``glossrec.hybrid.interleave_lists``), LIS first in each block."""
    from glossrec.hybrid import Lists, interleave_lists

    items, _ = interleave_lists([Lists.one_per_user("lis", lis), Lists.one_per_user("gloss", gloss)],
                                {"lis": slots[0], "gloss": slots[1]}, k)
    return items


def _paired(values: np.ndarray, base: np.ndarray) -> dict[str, Any]:
    """Mean, and the difference from `base` with its paired bootstrap 95% CI."""
    from glossrec.evaluate import bootstrap_ci

    lo, hi = bootstrap_ci(values - base)
    return {"mean": float(values.mean()), "minus_lis": float((values - base).mean()), "ci": [lo, hi]}


def anatomy(run_dir: Path, k: int = 5, slots: tuple[int, int] = (2, 3)) -> dict[str, Any]:
    """The counts above for one run directory and its lis-bm25 run."""
    from glossrec.compare import read_run
    from glossrec.config import load_config
    from glossrec.evaluate import ndcg_at, recall_at, target_ranks

    cfg = load_config(run_dir / "config.toml")
    ds = _dataset(str(cfg.data.path), cfg.data.item_format, cfg.data.title_words)
    ids = {item: i for i, item in enumerate(ds.catalog.ids)}
    word = [first_word(t) for t in ds.catalog.titles]
    back = 1 if cfg.evaluate.split == "test" else 2  # the target's place from the end
    popularity = Counter(int(i) for s in ds.sequences for i in s[:-2])
    gloss, lis = read_run(run_dir), read_run(run_dir / "lis-bm25")
    users = sorted(set(gloss.users) & set(lis.users))
    parts: dict[str, Counter[str]] = {"same first word": Counter(), "other": Counter()}
    top1, topk = Counter(), Counter()
    pops: dict[str, list[int]] = {"gloss": [], "lis": [], "target": []}
    user_part, targets, lis_rows, gloss_rows = [], [], [], []
    for user in users:
        seq = ds.sequences[ds.user_index[user]]
        target, g_items = gloss.users[user]
        l_target, l_items = lis.users[user]
        if target != l_target or ds.catalog.ids[int(seq[-back])] != target:
            raise SystemExit(f"{run_dir}: user {user}'s target is not the {cfg.evaluate.split} target "
                             "of the dataset, or differs from lis-bm25's")
        last = word[int(seq[-back - 1])]
        user_part.append("same first word" if word[ids[target]] == last else "other")
        part = parts[user_part[-1]]
        g, li = g_items[:k], l_items[:k]
        part["users"] += 1
        part["gloss"] += target in g
        part["lis"] += target in li
        part["both"] += target in g and target in li
        for name, items in (("gloss", g), ("lis", li)):
            top1[name] += bool(items) and word[ids[items[0]]] == last
            topk[name] += sum(word[ids[x]] == last for x in items) / k
            pops[name] += [popularity[ids[x]] for x in items]
        pops["target"].append(popularity[ids[target]])
        targets.append(ids[target])
        lis_rows.append([ids[x] for x in l_items])
        gloss_rows.append([ids[x] for x in g_items])
    lis_lists = _padded(lis_rows)
    mixed = interleaved(lis_lists, _padded(gloss_rows), slots, k)
    ranks = {name: target_ranks(lists, np.asarray(targets))  # metrics at k cut the ranks at k
             for name, lists in (("mixed", mixed), ("lis", lis_lists))}
    for u, name in enumerate(user_part):
        parts[name]["interleaved"] += bool(ranks["mixed"][u] <= k)
    n = len(users)
    return {"run": str(run_dir), "split": cfg.evaluate.split, "users": n, "k": k,
            "parts": {name: dict(c) for name, c in parts.items()},
            "interleaved": {"slots": {"lis": slots[0], "gloss": slots[1]},
                            f"recall@{k}": _paired(recall_at(ranks["mixed"], k), recall_at(ranks["lis"], k)),
                            f"ndcg@{k}": _paired(ndcg_at(ranks["mixed"], k), ndcg_at(ranks["lis"], k))},
            "top1_same_first_word": {m: top1[m] / n for m in ("gloss", "lis")},
            "topk_same_first_word": {m: topk[m] / n for m in ("gloss", "lis")},
            "median_popularity": {m: statistics.median(v) if v else None for m, v in pops.items()}}


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| run | users | target starts like the last item | GLoSS hits there | LIS hits there | "
           "interleaved hits there | GLoSS hits elsewhere | LIS hits elsewhere | interleaved hits "
           "elsewhere | shared hits | top 1 starts like the last item (GLoSS / LIS) | median "
           "popularity (GLoSS / LIS / target) | interleaved R@k / N@k minus LIS [95% CI] |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        same, other = r["parts"]["same first word"], r["parts"]["other"]
        shared = same.get("both", 0) + other.get("both", 0)
        t1, mp = r["top1_same_first_word"], r["median_popularity"]
        rec, ndcg = r["interleaved"][f"recall@{r['k']}"], r["interleaved"][f"ndcg@{r['k']}"]
        out.append(f"| {Path(r['run']).name} | {r['users']} | {same.get('users', 0)} | "
                   f"{same.get('gloss', 0)} | {same.get('lis', 0)} | {same.get('interleaved', 0)} | "
                   f"{other.get('gloss', 0)} | {other.get('lis', 0)} | {other.get('interleaved', 0)} | "
                   f"{shared} | {t1['gloss']:.2f} / {t1['lis']:.2f} | "
                   f"{mp['gloss']} / {mp['lis']} / {mp['target']} | "
                   f"{rec['mean']:.3f} {rec['minus_lis']:+.3f} [{rec['ci'][0]:+.3f}, {rec['ci'][1]:+.3f}] / "
                   f"{ndcg['mean']:.4f} {ndcg['minus_lis']:+.4f} [{ndcg['ci'][0]:+.4f}, {ndcg['ci'][1]:+.4f}] |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="glossrec run directories with lis-bm25/")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--slots", type=int, nargs=2, default=(2, 3), metavar=("LIS", "GLOSS"),
                    help="places per block of the interleave for LIS and GLoSS (default: 2 3, "
                         "configs/gloss-lis-interleave-beauty.toml's)")
    ap.add_argument("--json", type=Path, default=RESULTS / "hit_anatomy.json")
    args = ap.parse_args(argv)
    before = machine()
    rows = [anatomy(r, args.k, tuple(args.slots)) for r in args.runs]
    print(table(rows))
    write_results(args.json, {"k": args.k, "slots": list(args.slots), "runs": rows}, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
