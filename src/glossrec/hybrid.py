"""A hybrid ranking: the text paths (Last-Item Search, the LM's generated texts) and ID-based
models fused per user, by weighted reciprocal-rank fusion or by interleaving.

Each component gives every user ranked lists of catalog positions (depth ``hybrid.depth``):

- ``lis``: the last history item's text searched in the catalog (one list);
- ``gloss``: each generated text's hits (one list per text; texts from a generations file),
  or, for interleaving, the LM's own ranked list (``retrieve.ranking``, the GLoSS row's);
- ``sasrec`` / ``itemknn`` / ``pop``: the trained model's top items (one list).

Weighted rrf (``hybrid.fusion = "rrf"``): the fused score of item i is
``sum over lists l of w_c(l) / (rrf_k + rank_l(i))`` (:func:`glossrec.retrieve.ranking.fuse`
with row weights), ties to the item seen first.

Interleaving (``"interleave"``): places 1..k are dealt in blocks of sum(``hybrid.slots``);
within a block, each component in turn takes ``slots[c]`` places with its best items not yet
listed (a component out of items passes its place to the next one that has some). With slots
{lis: 3, gloss: 2} a list is LIS's top 3, the LM's top 2, LIS's next 3, ... The item at place
r scores 1 / r. Unlike rrf it keeps each list's own order and gives a component places it
fills whatever the others hold, which is what a generator with a few confident items needs.

The weights and rrf_k, or the slots, are chosen on validation users by grid search on
NDCG@10, never on test users, unless ``hybrid.weights`` / ``hybrid.slots`` fixes them.

New items: an ID model cannot rank an item it never saw in training (its score is -inf), so
such an item reaches a user's list only through the text components, which search the live
catalog by text. That is what makes the hybrid recommend items added after training.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.baselines import IdModel, rank_histories
from glossrec.config import HybridConfig, Ranking
from glossrec.errors import ConfigError
from glossrec.evaluate import ndcg_at, target_ranks
from glossrec.retrieve.base import Retriever
from glossrec.retrieve.ranking import LIS, fuse_users, rank_texts

log = logging.getLogger(__name__)


@dataclass
class Lists:
    """One component's ranked lists for n users: rows offsets[u]:offsets[u+1] are user u's."""

    name: str
    rows: np.ndarray
    """[n_rows, depth] int64 catalog positions, best first; -1 pads."""
    offsets: np.ndarray

    @classmethod
    def one_per_user(cls, name: str, rows: np.ndarray) -> Lists:
        return cls(name, np.asarray(rows, dtype=np.int64), np.arange(len(rows) + 1))


def lis_lists(retriever: Retriever, last_texts: Sequence[str], depth: int,
              exclude: Sequence[np.ndarray] | None) -> Lists:
    """Last-Item Search through the one ranking path, `depth` items per user."""
    res = rank_texts(retriever, [[t] for t in last_texts], depth, LIS, exclude=exclude)
    return Lists.one_per_user("lis", res.items)


def text_lists(retriever: Retriever, texts_per_user: Sequence[Sequence[str]], depth: int,
               exclude: Sequence[np.ndarray] | None, ranking: Ranking | None = None) -> Lists:
    """The generated texts through the ranking path: every text's own hits (one list per
    text), or with `ranking` the user's one list ranked by it (what a GLoSS row ranks)."""
    if ranking is not None:
        return Lists.one_per_user("gloss", rank_texts(retriever, texts_per_user, depth, ranking,
                                                      exclude=exclude).items)
    res = rank_texts(retriever, texts_per_user, depth, "max", exclude=exclude, per_text_k=depth)
    return Lists("gloss", res.hit_idx, res.offsets)


def model_lists(model: IdModel, histories: Sequence[Sequence[int]], depth: int,
                exclude: Sequence[np.ndarray] | None) -> Lists:
    items, _ = rank_histories(model, histories, depth, exclude)
    return Lists.one_per_user(model.kind, items)


@dataclass
class IdComponent:
    """An ID-based model's part of a hybrid, for a batch of users."""

    model: IdModel
    histories: Sequence[Sequence[int]]
    """Per user, the history in the model's item positions."""
    exclude: Sequence[np.ndarray] | None = None
    """Per user, the model positions never ranked (None: nothing excluded)."""
    to_catalog: Callable[[np.ndarray], np.ndarray] | None = None
    """Model positions -> positions of the searched catalog (-1: not there), when the two
    differ (a live catalog that changed since training); None: the same positions."""


def build_lists(cfg: HybridConfig, depth: int, *, retriever: Retriever | None = None,
                last_texts: Sequence[str] = (), texts: Sequence[Sequence[str]] | None = None,
                exclude: Sequence[np.ndarray | None] | None = None,
                models: Sequence[IdComponent] = (), fixed: bool = False,
                ranking: Ranking = "paper") -> list[Lists]:
    """The hybrid's components for a batch of users (lis, gloss, then each ID model): the one
    place that assembles them, for evaluation (glossrec.pipeline.run_hybrid) and serving (the
    Recommender) alike.

    One inclusion rule: LIS when ``hybrid.lis`` (the users' `last_texts` searched), the LM's
    generated `texts` when given, and every ID model; with the fusion `fixed` (`cfg` holds its
    weights or slots), a component with no share in it is not built, as fusion would ignore it.
    `exclude`: per user, the catalog positions never ranked. `ranking`: how the LM's texts
    become its one list when interleaving.
    """
    def kept(name: str) -> bool:
        return not fixed or cfg.share(name) > 0

    out: list[Lists] = []
    if cfg.lis and kept("lis"):
        out.append(lis_lists(_need(retriever), last_texts, depth, exclude))  # type: ignore[arg-type]
    if texts is not None and kept("gloss"):
        out.append(text_lists(_need(retriever), texts, depth, exclude,  # type: ignore[arg-type]
                              ranking if cfg.fusion == "interleave" else None))
    for m in models:
        if not kept(m.model.kind):
            continue
        lists = model_lists(m.model, m.histories, depth, m.exclude)
        if m.to_catalog is not None:
            lists = Lists.one_per_user(lists.name, np.where(
                lists.rows >= 0, m.to_catalog(lists.rows.ravel()).reshape(lists.rows.shape), -1))
        out.append(lists)
    if not out:
        raise ConfigError("a hybrid needs at least one component (lis, generations, a model)")
    return out


def _need(retriever: Retriever | None) -> Retriever:
    if retriever is None:
        raise ValueError("the text components of a hybrid need a retriever")
    return retriever


def fuse_lists(components: Sequence[Lists], weights: dict[str, float], k: int,
               rrf_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(items [n, k], scores [n, k]) by weighted rrf of every user's lists of every component."""
    comps = [c for c in components if weights.get(c.name, 0.0) > 0]
    if not comps:
        raise ValueError(f"every weight is 0 ({weights})")
    n = len(comps[0].offsets) - 1
    rows, w, offsets = [], [], [0]
    for u in range(n):
        for c in comps:
            a, b = c.offsets[u], c.offsets[u + 1]
            rows.append(c.rows[a:b])
            w.append(np.full(b - a, weights[c.name]))
        offsets.append(offsets[-1] + sum(int(c.offsets[u + 1] - c.offsets[u]) for c in comps))
    depth = max(c.rows.shape[1] for c in comps)
    hit = np.concatenate([np.pad(r, ((0, 0), (0, depth - r.shape[1])), constant_values=-1)
                          for r in rows]) if rows else np.zeros((0, depth), dtype=np.int64)
    return fuse_users(hit, np.zeros(hit.shape), np.asarray(offsets), "rrf", k, rrf_k,
                      np.concatenate(w) if w else np.zeros(0))


def interleave_lists(components: Sequence[Lists], slots: dict[str, int],
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """(items [n, k], scores [n, k]) by interleaving one list per user per component: each
    block of sum(slots) places goes to the components in order, `slots[name]` places each
    (their best items not yet listed); a component out of items passes its place on; place r
    scores 1 / r. Components with no slots take no part."""
    comps = [c for c in components if slots.get(c.name, 0) > 0]
    if not comps:
        raise ValueError(f"no component has a place ({slots})")
    for c in comps:
        if len(c.rows) != len(c.offsets) - 1:
            raise ValueError(f"interleaving needs one list per user; {c.name} has several")
    turns = [i for i, c in enumerate(comps) for _ in range(slots[c.name])]
    n = len(comps[0].rows)
    items = np.full((n, k), -1, dtype=np.int64)
    for u in range(n):
        lists = [c.rows[u][c.rows[u] >= 0].tolist() for c in comps]
        heads = [0] * len(comps)
        taken: set[int] = set()
        for place in range(k):
            order = turns[place % len(turns)]
            for c in [order, *(i for i in range(len(comps)) if i != order)]:
                while heads[c] < len(lists[c]) and lists[c][heads[c]] in taken:
                    heads[c] += 1
                if heads[c] < len(lists[c]):
                    break
            else:
                break  # every component is out of items
            items[u, place] = lists[c][heads[c]]
            taken.add(lists[c][heads[c]])
    scores = np.where(items >= 0, 1.0 / np.arange(1, k + 1), -np.inf)
    return items, scores


def fuse(components: Sequence[Lists], cfg: HybridConfig, k: int,
         rrf_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The config's fixed fusion of the components' lists (rrf_k: rrf's k where the config
    leaves it unset)."""
    if cfg.fusion == "interleave":
        assert cfg.slots is not None, "interleaving needs fixed slots"
        return interleave_lists(components, cfg.slots, k)
    assert cfg.weights is not None, "rrf needs fixed weights"
    k_rrf = cfg.rrf_k or rrf_k
    assert k_rrf is not None, "rrf needs an rrf_k"
    return fuse_lists(components, cfg.weights, k, k_rrf)


def slot_grid(names: Sequence[str], block: int) -> list[dict[str, int]]:
    """Every split of `block` places among the components (each may get 0)."""
    combos = itertools.product(range(block + 1), repeat=len(names))
    return [dict(zip(names, combo)) for combo in combos if sum(combo) == block]


def weight_grid(names: Sequence[str], cfg: HybridConfig) -> list[dict[str, float]]:
    """Every weighting to try: the first component fixed at 1, each other one from the grid."""
    first, rest = names[0], list(names[1:])
    return [{first: 1.0, **dict(zip(rest, combo))}
            for combo in itertools.product(cfg.weight_grid, repeat=len(rest))]


@dataclass
class Tuned:
    fixed: dict[str, Any]
    """The hybrid fields that fix the chosen fusion: weights and rrf_k, or slots."""
    valid_ndcg10: float
    tried: list[dict[str, Any]]


def tune(components: Sequence[Lists], targets: np.ndarray, cfg: HybridConfig) -> Tuned:
    """The config's fusion with the best NDCG@10 on these (validation) users: weights and
    rrf_k over weight_grid x rrf_k_grid, or slots over every split of a block."""
    names = [c.name for c in components]
    if cfg.fusion == "interleave":
        grid: list[dict[str, Any]] = [{"slots": s} for s in slot_grid(names, cfg.block)]
    else:
        grid = [{"weights": w, "rrf_k": k} for k in cfg.rrf_k_grid for w in weight_grid(names, cfg)]
    tried = []
    best: Tuned | None = None
    for fixed in grid:
        items, _ = fuse(components, cfg.model_copy(update=fixed), 10)
        score = float(ndcg_at(target_ranks(items, targets), 10).mean())
        tried.append({**fixed, "ndcg@10": round(score, 5)})
        if best is None or score > best.valid_ndcg10:
            best = Tuned(fixed, score, tried)
    assert best is not None
    log.info("hybrid: best on validation %s ndcg@10=%.4f", best.fixed, best.valid_ndcg10)
    return best


def load_id_model(run: Path) -> IdModel:
    """The ID-based model of a `glossrec baseline` run directory."""
    from glossrec.baselines import load_model
    from glossrec.rundir import RunDir

    return load_model(RunDir(run).baseline)
