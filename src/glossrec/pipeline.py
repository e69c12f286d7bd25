"""Wiring of the stages into runs: LIS, retrieval of given texts, and the full GLoSS pipeline.

A run's dataset, splits and evaluated users come from :func:`prepare` (glossrec.splits'
function, the one that every command, training and the service go through).

This module and the CLI are the only places that connect stages; each stage module imports
only from the stages to its left.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.config import HybridConfig, Ranking, RunConfig
from glossrec.data import Dataset, load_data  # noqa: F401 (the pipeline's load_data is data's)
from glossrec.errors import ConfigError, DataError, import_optional
from glossrec.evaluate import Evaluation, evaluate, write_run
from glossrec.fingerprint import manifest_key
from glossrec.progress import say as log
from glossrec.retrieve.base import Retriever
from glossrec.retrieve.ranking import LIS, rank_texts
from glossrec.rundir import RunDir
from glossrec.splits import (  # noqa: F401 (the pipeline's prepare is glossrec.splits')
    Example, Prepared, Splits, prepare, sample_users, users_to_sample,
)


def build_index(cfg: RunConfig, ds: Dataset) -> Retriever:
    from glossrec.retrieve import build_retriever

    retriever = build_retriever(cfg.retrieve)
    retriever.index(ds.catalog.ids, ds.catalog.texts())
    return retriever


def _exclusions(examples: Sequence[Example], on: bool) -> list[np.ndarray] | None:
    """Per user, the history positions never ranked for it (retrieve.exclude_history)."""
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
            retriever: Retriever | None = None, splits: Splits | None = None) -> Evaluation:
    """Last-Item Search: the last history item's text is the query (the paper's baseline)."""
    prep = prepare(cfg, ds, splits)
    t0 = time.perf_counter()
    retriever = retriever or build_index(cfg, prep.dataset)
    t_index = time.perf_counter() - t0
    cat = prep.dataset.catalog
    k = max(cfg.evaluate.cutoffs)
    t0 = time.perf_counter()
    # The one ranking path (retrieve.ranking.rank_texts); LIS is its case of one text per user.
    texts = [[cat.text(e.history[-1])] for e in prep.examples]
    search: Any = retriever
    if _reuses_item_embeddings(cfg, retriever, cat):
        # The query IS a catalog item's text and queries are encoded like items (no e5
        # prefixes): its embedding is already in the index, so nothing is encoded again.
        emb = retriever.embeddings[[e.history[-1] for e in prep.examples]]  # type: ignore[attr-defined]

        def by_embedding(_texts: list[str], width: int, exclude: list[np.ndarray] | None
                         ) -> tuple[np.ndarray, np.ndarray]:
            return retriever.search_embeddings(emb, width, exclude)  # type: ignore[attr-defined]

        search = by_embedding
    ranked, scores = _rank(cfg, search, texts, prep.examples, k, LIS)
    t_search = time.perf_counter() - t0
    return _finish(cfg, prep, ranked, scores, out,
                   {"method": f"LIS-{cfg.retrieve.retriever}",
                    "timing_s": {"index": round(t_index, 3), "search": round(t_search, 3)}})


def _reuses_item_embeddings(cfg: RunConfig, retriever: Retriever, cat: Any) -> bool:
    return (hasattr(retriever, "search_embeddings") and not cfg.retrieve.e5_prefixes
            and list(retriever.ids) == cat.ids)


def _rank(cfg: RunConfig, search: Any, texts_per_user: Sequence[Sequence[str]],
          examples: Sequence[Example], k: int, method: Ranking) -> tuple[np.ndarray, np.ndarray]:
    """retrieve.ranking.rank_texts with the run's settings; (items, scores) [n_users, k]."""
    rc = cfg.retrieve
    res = rank_texts(search, texts_per_user, k, method,
                     exclude=_exclusions(examples, rc.exclude_history),
                     per_text_k=rc.per_text_k, rrf_k=rc.rrf_k, show_progress=True)
    return res.items, res.scores


def run_retrieve(cfg: RunConfig, queries: dict[str, list[str]], out: Path | None = None,
                 ds: Dataset | None = None, retriever: Retriever | None = None,
                 source: str = "queries", splits: Splits | None = None) -> Evaluation:
    """Evaluate given query texts per user (generated titles) against the split's targets.

    Exactly the users in `queries` are evaluated; a user not in the split is named and skipped.
    """
    prep = prepare(cfg, ds, splits)
    ds, splits = prep.dataset, prep.splits
    assert splits is not None
    by_user = {e.user_id: e for e in splits.get(cfg.evaluate.split)}
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
    ranked, scores = _rank(cfg, retriever, [queries[e.user_id] for e in examples], examples, k,
                           cfg.retrieve.ranking)
    t_search = time.perf_counter() - t0
    return _finish(cfg, prep, ranked, scores, out,
                   {"method": f"texts-{cfg.retrieve.retriever}-{cfg.retrieve.ranking}",
                    "unscored_users": unknown,
                    "timing_s": {"search": round(t_search, 3)}})


def run_baseline(cfg: RunConfig, kind: str, out: Path | None = None,
                 ds: Dataset | None = None) -> Evaluation:
    """Train an ID-based baseline (SASRec-CE, item-kNN, popularity) on the split's training
    sequences and score it on the config's users, like any other run.

    With `out`, the model is saved in RUN/baseline and a rerun with a saved model of the same
    kind and n_items scores it again without training.
    """
    from glossrec.baselines import fit_model, load_model, rank_histories, save_model
    from glossrec.baselines.base import META_FILE

    prep = prepare(cfg, ds)
    ds, splits, examples = prep.dataset, prep.splits, prep.examples
    assert splits is not None
    folder = RunDir(out).baseline if out is not None else None
    t0 = time.perf_counter()
    if folder is not None and (folder / META_FILE).is_file():
        model = load_model(folder)
        if model.kind != kind or model.n_items != len(ds.catalog):
            raise ConfigError(f"{folder} holds a {model.kind} model over {model.n_items} items; "
                              f"use a new --out for {kind} on {ds.name}")
        log(f"{kind}: loaded the trained model from {folder}")
    else:
        log(f"{kind}: training on {len(splits.train)} users' training sequences")
        model = fit_model(kind, len(ds.catalog), splits, cfg)
        if folder is not None:
            save_model(model, folder, ds.catalog.ids)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranked, scores = rank_histories(model, [e.history for e in examples], max(cfg.evaluate.cutoffs),
                                    _exclusions(examples, cfg.retrieve.exclude_history))
    t_score = time.perf_counter() - t0
    extra: dict[str, Any] = {"method": kind, "timing_s": {"fit": round(t_fit, 1),
                                                          "score": round(t_score, 3)}}
    fit_log = getattr(model, "log", None)
    if fit_log is not None:
        extra["fit"] = {k: v for k, v in vars(fit_log).items() if k != "history"}
    return _finish(cfg, Prepared(ds, examples), ranked, scores, out, extra)


def run_hybrid(cfg: RunConfig, models: Sequence[Path] | None = None, out: Path | None = None,
               generations: dict[str, Path] | None = None, ds: Dataset | None = None) -> Evaluation:
    """Fuse Last-Item Search, the LM's texts (`generations`: split -> file, "valid" and "test")
    and ID-based models (`models`: `glossrec baseline` run directories) by weighted rrf or by
    interleaving (hybrid.fusion).

    The fusion's weights (or slots) are tuned on the validation users (glossrec.hybrid.tune)
    unless the config fixes them; the config's users of evaluate.split are then ranked once
    and scored.
    """
    from glossrec.generate import read_generations
    from glossrec.hybrid import IdComponent, Lists, build_lists, fuse, load_id_model, tune

    prep = prepare(cfg, ds)
    ds, splits, examples = prep.dataset, prep.splits, prep.examples
    assert splits is not None
    models = [Path(m).resolve() for m in (models if models is not None else cfg.hybrid.models)]
    cfg = cfg.updated(hybrid={"models": models})
    hc = cfg.hybrid
    ids = [load_id_model(m) for m in models]
    for m, path in zip(ids, models):
        if m.n_items != len(ds.catalog):
            raise ConfigError(f"{path}: its {m.kind} model ranks {m.n_items} items, the dataset "
                              f"{ds.name} has {len(ds.catalog)}: train it on this dataset")
    gens = {split: read_generations(p) for split, p in (generations or {}).items()}
    retriever = build_index(cfg, ds) if hc.lis or gens else None
    cat = ds.catalog

    def lists(examples: Sequence[Example], split: str, hc: HybridConfig,
              fixed: bool = False) -> list[Lists]:
        texts = None
        if split in gens:
            missing = [e.user_id for e in examples if e.user_id not in gens[split]]
            if missing:
                raise DataError(f"no generated texts for {len(missing)} {split} users "
                                f"(e.g. {missing[:3]})", generations[split])  # type: ignore[index]
            texts = [gens[split][e.user_id] for e in examples]
        excl = _exclusions(examples, cfg.retrieve.exclude_history)
        histories = [e.history for e in examples]
        return build_lists(hc, hc.depth, retriever=retriever, texts=texts, exclude=excl,
                           last_texts=[cat.text(e.history[-1]) for e in examples],
                           models=[IdComponent(m, histories, excl) for m in ids], fixed=fixed,
                           ranking=cfg.retrieve.ranking)

    extra: dict[str, Any] = {"method": "hybrid", "fusion": hc.fusion}
    if hc.fusion == "rrf" and hc.weights is not None:
        cfg = cfg.updated(hybrid={"rrf_k": hc.rrf_k or cfg.retrieve.rrf_k})
    elif not hc.is_fixed:
        if generations and "valid" not in gens:
            raise ConfigError("tuning the hybrid on validation users needs their generated texts "
                              "(generations for the valid split), or a fixed fusion "
                              "(hybrid.weights, or hybrid.slots)")
        valid = sample_users(splits.valid, hc.tune_users, cfg.evaluate.user_seed)
        t0 = time.perf_counter()
        tuned = tune(lists(valid, "valid", hc), np.array([e.target for e in valid]), hc)
        cfg = cfg.updated(hybrid=tuned.fixed)
        extra["tuned"] = {"valid_users": len(valid), "valid_ndcg@10": tuned.valid_ndcg10,
                          "seconds": round(time.perf_counter() - t0, 1), "tried": tuned.tried}
        log(f"hybrid: {tuned.fixed} (validation NDCG@10 {tuned.valid_ndcg10:.4f})")
    hc = cfg.hybrid
    if hc.share("gloss") > 0 and cfg.evaluate.split not in gens:
        raise ConfigError(f"the fusion gives the LM's texts a share ({hc.fixing}) but "
                          f"there are none for the {cfg.evaluate.split} users (--generations)")
    t0 = time.perf_counter()
    final = lists(examples, cfg.evaluate.split, hc, fixed=True)
    ranked, scores = fuse(final, hc, max(cfg.evaluate.cutoffs), cfg.retrieve.rrf_k)
    extra.update({**hc.fixing, "components": [c.name for c in final],
                  "timing_s": {"rank": round(time.perf_counter() - t0, 2)}})
    return _finish(cfg, Prepared(ds, examples), ranked, scores, out, extra)


# --- the full GLoSS run ----------------------------------------------------------------------

class Manifest:
    """RUN_DIR/manifest.json: which stages finished, with which config, in how long."""

    def __init__(self, run_dir: Path) -> None:
        from glossrec.io import read_json

        self.path = RunDir(run_dir).manifest
        self.data: dict[str, Any] = read_json(self.path) if self.path.exists() else {"stages": {}}

    def done(self, stage: str, key: str) -> bool:
        rec = self.data["stages"].get(stage)
        if rec is None:
            return False
        if rec["key"] != key:
            raise ConfigError(
                f"{self.path.parent}: the '{stage}' stage was made with a different config "
                f"({rec['key']} != {key}); use a new --out, or --force to redo it")
        return True

    def mark(self, stage: str, key: str, seconds: float, **info: Any) -> None:
        from glossrec.io import write_json

        self.data["stages"][stage] = {"key": key, "seconds": round(seconds, 1), **info}
        write_json(self.path, self.data)

    def forget(self, *stages: str) -> None:
        for s in stages:
            self.data["stages"].pop(s, None)


def run(cfg: RunConfig, out: Path | None = None, force: bool = False,
        baselines: bool = True, score: bool = True) -> dict[str, Evaluation]:
    """data -> train -> generate -> retrieve -> evaluate into one run directory.

    With model.weights set (a shipped model's name or a weights folder) there is no training:
    the run generates with those weights, unless it has trained weights of its own, which come
    first (glossrec.weights, the one precedence rule). Stages whose outputs exist for the same config are skipped; a killed training or generation
    resumes where it stopped. LIS (BM25 and dense) is scored on the same users beside GLoSS.
    ``score=False`` stops after generation (a caller that scores its own variants).
    """
    run_dir = Path(out or cfg.out or "runs/run").resolve()
    rd = RunDir(run_dir)
    cfg = cfg.model_copy(update={"out": run_dir})
    ds = load_data(cfg)  # no dataset: a clear error before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir)
    if force:
        manifest.forget("train", "generate")
    rd.write_config(cfg)
    prep = prepare(cfg, ds)  # the one load and split of this run; every stage gets them
    splits = prep.splits
    log(f"run {run_dir}: {ds.name}, {len(prep.examples)} {cfg.evaluate.split} users evaluated")

    key = manifest_key(cfg, "train")
    if cfg.model.weights is None and manifest.done("train", key) and rd.adapter.is_dir():
        log("train: done already, skipped")
    elif cfg.model.weights is None:
        from glossrec.train import train_from_config

        t0 = time.perf_counter()
        res = train_from_config(cfg, run_dir, ds=ds, splits=splits)
        manifest.mark("train", key, time.perf_counter() - t0, result=_jsonable(res))
    weights = rd.weights(cfg)  # the one precedence rule: the run's own, then model.weights
    if weights is None:
        raise ConfigError(f"{rd.adapter}: holds no trained weights (training did not finish?); "
                          "use --force to train again")
    if cfg.model.weights is not None:
        whose = "its own" if weights == rd.adapter else f"model.weights {cfg.model.weights}"
        log(f"train: skipped, the run uses the trained weights of {whose} ({weights})")

    # generate_examples resumes a partial file and refuses one made with other settings.
    from glossrec.generate import generate_examples

    gens = rd.generations("test")
    gen_key = manifest_key(cfg, "generate")
    manifest.done("generate", gen_key)  # made under another config: refused, unless --force
    t0 = time.perf_counter()
    generate_examples(cfg, prep.examples, ds.catalog, weights, gens, overwrite=force,
                      prior_table_file=rd.prior_table)
    if "generate" not in manifest.data["stages"] or force:
        manifest.mark("generate", gen_key, time.perf_counter() - t0, users=len(prep.examples))

    if not score:
        return {}
    from glossrec.generate import read_generations

    # Only this config's users: a file may also hold users of an earlier, differently sampled run.
    generated = read_generations(gens)
    queries = {e.user_id: generated[e.user_id] for e in prep.examples if e.user_id in generated}
    kinds = [cfg.retrieve.retriever]
    if baselines:
        kinds.append("bm25" if cfg.retrieve.retriever == "dense" else "dense")
    results: dict[str, Evaluation] = {}
    lis: dict[str, Evaluation] = {}
    for n, kind in enumerate(kinds):
        kcfg = cfg.updated(retrieve={"retriever": kind})
        index = build_index(kcfg, ds)  # one index per retriever kind, shared by GLoSS and LIS
        if n == 0:
            persist_index(run_dir, index, ds)
        results[f"GLoSS-{kind}"] = run_retrieve(kcfg, queries, run_dir if n == 0 else rd.gloss(kind).path,
                                                ds, index, source=str(gens), splits=splits)
        if baselines:
            lis[f"LIS-{kind}"] = run_lis(kcfg, rd.lis(kind).path, ds, index, splits)
    results.update(lis)
    write_report(run_dir, results)
    return results


def persist_index(run_dir: Path, index: Retriever, ds: Dataset) -> None:
    """Save the run's retriever as its live catalog (RUN_DIR/index), so that `glossrec serve
    --run` starts at once instead of encoding the catalog again. An existing live catalog is
    left alone: it may hold items added or removed while serving."""
    from glossrec.retrieve.live import LiveCatalog

    rd = RunDir(run_dir)
    if rd.has_catalog():
        log(f"index: {rd.index} exists (the served catalog), left as is")
        return
    try:
        LiveCatalog.from_catalog(rd.index, ds.catalog, index, indexed=True)
    except DataError as e:  # e.g. an item the service would refuse; the scores stand anyway
        log(f"warning: run not made servable ({e}); `glossrec index` can build its catalog")


def _jsonable(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else repr(obj)


def write_report(run_dir: Path, results: dict[str, Evaluation]) -> None:
    """report.md (overall + per segment tables, 95% bootstrap CIs) and report.png."""
    from glossrec.evaluate import SEGMENTS, bootstrap_ci, format_table
    from glossrec.io import atomic_write

    lines = [f"# Run report: {run_dir.name}", "", "```",
             format_table({k: v.metrics for k, v in results.items()}), "```", "",
             "Recall@5 with 95% bootstrap CI (users resampled):", ""]
    for name, ev in results.items():
        lo, hi = bootstrap_ci(ev.per_user["recall@5"])
        lines.append(f"- {name}: {ev.metrics['overall']['recall@5']:.4f} [{lo:.4f}, {hi:.4f}]")
    for seg in SEGMENTS:
        lines += ["", f"## {seg} users", "", "```",
                  format_table({k: v.metrics[seg] for k, v in results.items()},
                               ("recall@5", "ndcg@5", "recall@10", "ndcg@10")), "```"]
    rd = RunDir(run_dir)
    with atomic_write(rd.report_md) as f:
        f.write("\n".join(lines) + "\n")
    try:
        _plot(rd.report_png, results)
    except Exception as e:  # a report without a figure is still a report
        log(f"warning: no plot ({e})")


def _plot(path: Path, results: dict[str, Evaluation]) -> None:
    matplotlib = import_optional("matplotlib", "report", path.name)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glossrec.evaluate import SEGMENTS

    groups = ("overall", *SEGMENTS)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(results), 1)
    for ax, metric in zip(axes, ("recall@5", "ndcg@5")):
        for j, (name, ev) in enumerate(results.items()):
            vals = [ev.metrics[g][metric] for g in groups]
            ax.bar(np.arange(len(groups)) + j * width, vals, width, label=name)
        ax.set_xticks(np.arange(len(groups)) + width * (len(results) - 1) / 2, groups)
        ax.set_title(metric)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
