"""Wiring of the stages into runs: LIS, retrieval of given texts, and the full GLoSS pipeline.

This module and the CLI are the only places that connect stages; each stage module imports
only from the stages to its left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.config import RunConfig
from glossrec.data import Dataset, load_dataset
from glossrec.errors import ConfigError, DataError
from glossrec.evaluate import Evaluation, evaluate, write_run
from glossrec.retrieve.base import Retriever
from glossrec.retrieve.ranking import fuse_users
from glossrec.splits import Example, make_splits, sample_users


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Prepared:
    dataset: Dataset
    examples: list[Example]
    """The evaluated users of the chosen split (sampled when cfg.evaluate.users is set)."""


def load_data(cfg: RunConfig) -> Dataset:
    if cfg.data.path is None:
        raise ConfigError("no dataset: give --data DIR or set [data] path in the config")
    ds = load_dataset(cfg.data.path, cfg.data.item_format, cfg.data.title_words)
    for line in ds.report.lines():
        log(f"{ds.name}: {line}")
    return ds


def prepare(cfg: RunConfig, ds: Dataset | None = None) -> Prepared:
    ds = ds or load_data(cfg)
    splits = make_splits(ds, cfg.split)
    examples = sample_users(splits.get(cfg.evaluate.split), cfg.evaluate.users, cfg.evaluate.user_seed)
    return Prepared(ds, examples)


def build_index(cfg: RunConfig, ds: Dataset) -> Retriever:
    from glossrec.retrieve import build_retriever

    retriever = build_retriever(cfg.retrieve)
    retriever.index(ds.catalog.ids, ds.catalog.texts())
    return retriever


def _exclusions(examples: Sequence[Example], on: bool) -> list[np.ndarray] | None:
    if not on:
        return None
    return [np.fromiter(ex.history, dtype=np.int64, count=len(ex.history)) for ex in examples]


def _finish(cfg: RunConfig, prep: Prepared, ranked: np.ndarray, scores: np.ndarray,
            out: Path | None, extra: dict[str, Any]) -> Evaluation:
    ex = prep.examples
    ev = evaluate([e.user_id for e in ex], np.array([e.target for e in ex], dtype=np.int64),
                  ranked, scores, np.array([e.length for e in ex]), cfg.evaluate, prep.dataset.name)
    if out is not None:
        write_run(out, ev, prep.dataset.catalog.ids, cfg, extra)
    return ev


def run_lis(cfg: RunConfig, out: Path | None = None, ds: Dataset | None = None,
            retriever: Retriever | None = None) -> Evaluation:
    """Last-Item Search: the last history item's text is the query (the paper's baseline)."""
    prep = prepare(cfg, ds)
    t0 = time.perf_counter()
    retriever = retriever or build_index(cfg, prep.dataset)
    t_index = time.perf_counter() - t0
    cat = prep.dataset.catalog
    queries = [cat.text(e.history[-1]) for e in prep.examples]
    k = max(cfg.evaluate.cutoffs)
    t0 = time.perf_counter()
    ranked, scores = retriever.search(queries, k, _exclusions(prep.examples, cfg.retrieve.exclude_history),
                                      show_progress=True)
    t_search = time.perf_counter() - t0
    return _finish(cfg, prep, ranked, scores, out,
                   {"method": f"LIS-{cfg.retrieve.retriever}",
                    "timing_s": {"index": round(t_index, 3), "search": round(t_search, 3)}})


def rank_texts(cfg: RunConfig, retriever: Retriever, texts_per_user: Sequence[Sequence[str]],
               histories: Sequence[Sequence[int]] | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search every text of every user and fuse each user's hits into one list (ranking.fuse)."""
    rc = cfg.retrieve
    per_text = 1 if rc.ranking == "paper" else max(rc.per_text_k, k)
    flat: list[str] = []
    offsets = [0]
    exclude: list[np.ndarray] | None = [] if histories is not None else None
    for u, texts in enumerate(texts_per_user):
        flat.extend(texts)
        offsets.append(len(flat))
        if exclude is not None and histories is not None:
            h = np.asarray(histories[u], dtype=np.int64)
            exclude.extend([h] * len(texts))
    if flat:
        idx, sc = retriever.search(flat, per_text, exclude, show_progress=True)
    else:
        idx = np.zeros((0, per_text), dtype=np.int64)
        sc = np.zeros((0, per_text), dtype=np.float32)
    return fuse_users(idx, sc, np.asarray(offsets), rc.ranking, k, rc.rrf_k)


def run_retrieve(cfg: RunConfig, queries: dict[str, list[str]], out: Path | None = None,
                 ds: Dataset | None = None, retriever: Retriever | None = None,
                 source: str = "queries") -> Evaluation:
    """Evaluate given query texts per user (generated titles) against the split's targets.

    Exactly the users in `queries` are evaluated; a user not in the split is named and skipped.
    """
    ds = ds or load_data(cfg)
    by_user = {e.user_id: e for e in make_splits(ds, cfg.split).get(cfg.evaluate.split)}
    unknown = [u for u in queries if u not in by_user]
    if unknown and len(unknown) == len(queries):
        raise DataError(f"none of the {len(queries)} users can be scored on the "
                        f"{cfg.evaluate.split} split (e.g. {unknown[:3]})", source)
    if unknown:
        log(f"warning: {len(unknown)} users in {source} cannot be scored on the "
            f"{cfg.evaluate.split} split and are skipped: {', '.join(unknown[:10])}"
            f"{' ...' if len(unknown) > 10 else ''}")
    examples = [by_user[u] for u in queries if u in by_user]
    prep = Prepared(ds, examples)
    retriever = retriever or build_index(cfg, ds)
    k = max(cfg.evaluate.cutoffs)
    t0 = time.perf_counter()
    histories = [e.history for e in examples] if cfg.retrieve.exclude_history else None
    ranked, scores = rank_texts(cfg, retriever, [queries[e.user_id] for e in examples], histories, k)
    t_search = time.perf_counter() - t0
    return _finish(cfg, prep, ranked, scores, out,
                   {"method": f"texts-{cfg.retrieve.retriever}-{cfg.retrieve.ranking}",
                    "unscored_users": unknown,
                    "timing_s": {"search": round(t_search, 3)}})
