"""The Python API: a history in, ranked catalog items out, on a catalog that changes live.

Two modes share one path: LIS (the query is the last history item's text) and LM (a prompt of
the history texts is continued by the fine-tuned model into several candidate titles, each is
searched, and the hits are fused). Requests are handled in batches (:meth:`recommend_many`) so a
server can send many users' prompts to the model in one generate call.

Grounded LM mode (``generate.constrain = "catalog"``): the generator's catalog trie follows the
live catalog (:class:`TrieSync`), so an item added or removed is in or out of generation by the
next request, and each request's history items are excluded from it.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np

from glossrec.config import Ranking, RunConfig
from glossrec.errors import ConfigError, DataError, GlossrecError
from glossrec.retrieve.ranking import LIS, rank_texts
from glossrec.retrieve.live import (
    ItemRecord, LiveCatalog, RetrieverLoader, UnknownItemsError, WriteResult,
)
from glossrec.rundir import MAKE_RUN, RunDir, make_index_run

if TYPE_CHECKING:
    from glossrec.generate.constrain import CatalogTrie
    from glossrec.hybrid import Lists

Mode = Literal["lis", "lm"]
# Ranking (paper | max | rrf) is glossrec.config's, imported above; re-exported for older imports.
GenerateFn = Callable[..., list[list[str]]]
"""prompts (and, grounded, per-prompt exclusions) -> texts per prompt."""

@dataclass(frozen=True)
class HistoryEntry:
    """One past item: a catalog id, or a free title for an item the catalog does not know.

    With both, the catalog's text is used when it knows the id and the title otherwise (a cart
    from another shop whose ids are foreign).
    """

    item_id: str | None = None
    title: str | None = None

    @classmethod
    def parse(cls, value: HistoryInput, position: int = 0) -> HistoryEntry:
        if isinstance(value, HistoryEntry):
            entry = value
        elif isinstance(value, str):
            entry = cls(item_id=value)
        elif isinstance(value, Mapping):
            extra = set(value) - {"item_id", "title"}
            if extra:
                raise DataError(f"history entry {position}: unknown keys {sorted(extra)} "
                                "(use item_id and/or title)")
            entry = cls(value.get("item_id"), value.get("title"))
        else:
            raise DataError(f"history entry {position}: expected an item id or an object with "
                            f"item_id/title, got {type(value).__name__}")
        for name in ("item_id", "title"):
            v = getattr(entry, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise DataError(f"history entry {position}: {name} must be a non-empty string")
        if entry.item_id is None and entry.title is None:
            raise DataError(f"history entry {position}: needs an item_id or a title")
        return entry


HistoryInput = Union[str, HistoryEntry, Mapping[str, Any]]


@dataclass(frozen=True)
class RecommendedItem:
    rank: int
    item_id: str
    title: str
    score: float
    queries: tuple[str, ...]
    """The query texts (generated titles, or the last item's text in LIS) that found it."""
    sources: tuple[str, ...] = ()
    """The components whose lists hold it, named as [hybrid] weights name them: "lis" (the
    last item's text), "gloss" (the LM's texts), or an ID model's kind ("sasrec", "itemknn",
    "pop")."""

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "item_id": self.item_id, "title": self.title,
                "score": self.score, "queries": list(self.queries), "sources": list(self.sources)}


@dataclass(frozen=True)
class Recommendation:
    items: list[RecommendedItem]
    queries: list[str]
    """Every query text used, in order (beam order in LM mode)."""
    mode: Mode
    catalog_version: str

    def to_json(self) -> dict[str, Any]:
        return {"items": [i.to_json() for i in self.items], "queries": self.queries,
                "mode": self.mode, "catalog_version": self.catalog_version}


@dataclass(frozen=True)
class Request:
    history: Sequence[HistoryInput]
    k: int = 10
    exclude_history: bool = True


@dataclass
class _Resolved:
    ids: list[str]
    """History ids the catalog holds (to exclude)."""
    texts: list[str]
    """Item text of every history entry, oldest first."""
    k: int
    exclude: bool
    queries: list[str] = field(default_factory=list)
    source: str = "lis"
    """The component the queries come from: "lis", or "gloss" when the LM wrote them."""


def _as_generate_fn(gen: Any) -> GenerateFn:
    if gen is None:
        raise ConfigError("LM mode needs a generator")
    if hasattr(gen, "generate"):
        return gen.generate
    if callable(gen):
        return gen
    raise ConfigError(f"not a generator: {type(gen).__name__}")


class TrieSync:
    """Keeps a generator's CatalogTrie equal to a live catalog.

    Retriever positions shift when items are removed, so the trie is keyed by a stable int per
    item id instead. A sync compares catalog versions and applies only the difference (ids gone
    or whose text changed are removed, new ones added): cheap at each request.
    """

    def __init__(self, trie: CatalogTrie) -> None:
        for key in trie.keys():  # whatever it held came from elsewhere: the catalog decides
            trie.remove(key)
        self.trie = trie
        self.version: str | None = None
        self.keys: dict[str, int] = {}
        self._texts: dict[str, str] = {}
        self._next = 0

    def sync(self, catalog: LiveCatalog) -> bool:
        """Bring the trie to the catalog's current version; True if anything was applied."""
        with catalog.locked():
            if catalog.version == self.version:
                return False
            current = {rec.item_id: catalog.text_of(rec) for rec in catalog.items()}
            version = catalog.version
        for iid in [i for i, t in self._texts.items() if current.get(i) != t]:
            self.trie.remove(self.keys.pop(iid))
            del self._texts[iid]
        added: list[tuple[int, str]] = []
        for iid, text in current.items():
            if iid not in self.keys:
                self.keys[iid], self._texts[iid] = self._next, text
                added.append((self._next, text))
                self._next += 1
        self.trie.add_many(added)
        self.version = version
        return True

    def keys_of(self, item_ids: Sequence[str]) -> list[int]:
        """Trie keys of the ids the trie holds (others are skipped)."""
        return [self.keys[i] for i in item_ids if i in self.keys]


class Recommender:
    """Recommendations from a live catalog, in LIS mode or LM (GLoSS) mode."""

    def __init__(self, catalog: LiveCatalog, config: RunConfig | None = None,
                 generator: Any = None, mode: Mode | None = None,
                 ranking: Ranking | None = None,
                 id_models: Sequence[tuple[Any, Sequence[str]]] = ()) -> None:
        """id_models: (ID-based model, the item id of each of its positions) pairs; with them
        every request is a hybrid: the text lists and the models' lists fused as the config's
        [hybrid] section fixes it (weights, or slots; glossrec.hybrid). In LM mode, a config
        whose fixed fusion gives both LIS and the LM a share makes a hybrid of the two alone."""
        self.catalog = catalog
        self.config = config or RunConfig()
        self.mode: Mode = mode or ("lm" if generator is not None else "lis")
        self._generate = _as_generate_fn(generator) if self.mode == "lm" else None
        self.ranking: Ranking = ranking or self.config.retrieve.serve_ranking
        self._builder = self._prompt_builder(generator) if self.mode == "lm" else None
        self.generate_calls = 0
        """How many times the model was called (batching makes it fewer than requests)."""
        self._tmpdir: Path | None = None
        self.run_dir: Path | None = None
        """The run directory served (from_run), where its report lives; None if not from one."""
        self._trie = self._trie_sync(generator)
        if self._trie is not None and hasattr(generator, "prior_table"):
            generator.prior_table()  # generate.prior_table: made now, not at the first request
        self._lm_lock = threading.Lock()
        """Grounded: a sync must not change the trie while a generate call walks it."""
        self._id_models = [(m, list(ids), {iid: p for p, iid in enumerate(ids)}) for m, ids in id_models]
        if self._id_models and not self.config.hybrid.is_fixed:
            raise ConfigError("serving a hybrid needs its fusion fixed ([hybrid] weights, or "
                              "slots): tune it with `glossrec hybrid` and serve its run directory")
        hc = self.config.hybrid
        self.hybrid = bool(self._id_models) or (
            self.mode == "lm" and hc.is_fixed and hc.lis
            and hc.share("lis") > 0 and hc.share("gloss") > 0)
        """Whether requests fuse several components (glossrec.hybrid), not one ranking path."""

    def _trie_sync(self, generator: Any) -> TrieSync | None:
        """Grounded LM mode: the generator's trie, filled from the live catalog now."""
        if self.mode != "lm" or self.config.generate.constrain != "catalog":
            return None
        trie = getattr(generator, "trie", None)
        if trie is None:
            raise ConfigError('generate.constrain = "catalog" needs a generator with a catalog '
                              "trie (glossrec.generate.make_generator builds one)")
        sync = TrieSync(trie)
        sync.sync(self.catalog)
        return sync

    def _prompt_builder(self, generator: Any) -> Any:
        """Prompts cut to the model's token budget in whole items (the pipeline's rule); a
        generator without a tokenizer (a test double) gets the plain template."""
        from glossrec.prompts import PromptBuilder

        tokenizer = getattr(generator, "tokenizer", None)
        if tokenizer is None:
            return None
        return PromptBuilder.from_config(tokenizer, self.config.prompt, self.catalog.formatter.item_format)

    def _prompt(self, history_texts: list[str]) -> str:
        from glossrec.prompts import render, resolve_template

        if self._builder is not None:
            return self._builder.test_prompt(history_texts, self.config.generate.max_new_tokens)
        template = resolve_template(self.config.prompt.template, self.catalog.formatter.item_format)
        return render(history_texts, None, template)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_run(cls, run_dir: str | Path, mode: Literal["auto", "lis", "lm"] = "auto",
                 generator: Any = None, ranking: Ranking | None = None,
                 loader: RetrieverLoader | None = None) -> Recommender:
        """Serve a run directory: its config, live catalog (built from the dataset on first use)
        and, in LM mode, its trained weights (its own, else model.weights: glossrec.weights).
        auto = LM when the run has trained weights, else LIS."""
        rd = RunDir(Path(run_dir))
        cfg = rd.read_config(hint=MAKE_RUN)
        catalog = rd.open_catalog(cfg, loader)
        adapter = rd.weights(cfg)  # the one precedence rule: the run's own, then model.weights
        chosen: Mode = ("lm" if adapter is not None else "lis") if mode == "auto" else mode
        if chosen == "lm" and generator is None:
            from glossrec.generate import make_generator

            # Grounded: an empty trie; the Recommender fills it from the live catalog.
            generator = make_generator(cfg, adapter, catalog=[], prior_table_file=rd.prior_table)
        rec = cls(catalog, cfg, generator, chosen, ranking, id_models=_hybrid_models(cfg))
        rec.run_dir = run_dir
        return rec

    @classmethod
    def from_config(cls, cfg: RunConfig, run_dir: str | Path, mode: Literal["auto", "lis", "lm"] = "auto",
                    generator: Any = None, ranking: Ranking | None = None) -> Recommender:
        """Write `cfg` as the run's config (if it has none yet) and serve that run."""
        run_dir = Path(run_dir)
        if not RunDir(run_dir).is_run():
            RunDir(run_dir).write_config(cfg)
        return cls.from_run(run_dir, mode, generator, ranking)

    @classmethod
    def from_dataset(cls, path: str | Path, retriever: Literal["bm25", "dense"] = "bm25",
                     out: str | Path | None = None, encoder: str | None = None,
                     ranking: Ranking | None = None, model: str | None = None) -> Recommender:
        """Recommendations over a dataset's catalog: LIS, or with `model` (a shipped model's
        name such as "smollm2-beauty", or a weights folder) the fine-tuned generator.

        `out` keeps the run directory (config + live catalog) for later; by default it lives in
        a temporary folder removed by :meth:`close`.
        """
        tmp = None
        if out is None:
            tmp = Path(tempfile.mkdtemp(prefix="glossrec-"))
            out = tmp / "run"
        run_dir = make_index_run(path, retriever, out, encoder=encoder, weights=model)
        rec = cls.from_run(run_dir, mode="lm" if model else "lis", ranking=ranking)
        rec._tmpdir = tmp
        return rec

    def close(self) -> None:
        """Stop the catalog's background work, then remove a temporary run directory."""
        self.catalog.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Recommender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def components(self) -> list[str]:
        """What can put an item in a list (the names of RecommendedItem.sources): "lis" in LIS
        mode, "gloss" in LM mode, and for a hybrid each component with a share in its fusion."""
        if not self.hybrid:
            return ["gloss" if self.mode == "lm" else "lis"]
        names = ["lis"] + (["gloss"] if self.mode == "lm" else []) + [m.kind for m, _, _ in self._id_models]
        return [n for n in names if self.config.hybrid.share(n) > 0]

    # ---- catalog ------------------------------------------------------------------------------

    def add_items(self, items: Sequence[ItemRecord | Mapping[str, Any]]) -> WriteResult:
        """Add (or replace) items; the next request can return them."""
        recs = [i if isinstance(i, ItemRecord) else ItemRecord.from_json(i) for i in items]
        return self.catalog.add(recs)

    def remove_items(self, item_ids: Sequence[str]) -> WriteResult:
        """Remove items; no later request returns them."""
        return self.catalog.remove(list(item_ids))

    def get_item(self, item_id: str) -> ItemRecord:
        self.catalog.refresh()
        rec = self.catalog.get(item_id)
        if rec is None:
            raise UnknownItemsError([item_id], "unknown item id")
        return rec

    # ---- recommending -------------------------------------------------------------------------

    def recommend(self, history: Sequence[HistoryInput], k: int = 10,
                  exclude_history: bool = True) -> Recommendation:
        """Top-k items for one history (ids, {"item_id"}/{"title"} objects, oldest first)."""
        out = self.recommend_many([Request(history, k, exclude_history)])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def recommend_many(self, requests: Sequence[Request]) -> list[Recommendation | GlossrecError]:
        """Many requests at once: one generate call, one search call. A request's own error
        (unknown ids, empty history) is returned in its slot and does not fail the others."""
        self.catalog.refresh()
        results: list[Recommendation | GlossrecError | None] = [None] * len(requests)
        todo: list[tuple[int, _Resolved]] = []
        for n, req in enumerate(requests):
            try:
                todo.append((n, self._resolve(req)))
            except GlossrecError as e:
                results[n] = e
        if todo:
            self._set_queries([r for _, r in todo])
            for (n, _), rec in zip(todo, self._search([r for _, r in todo])):
                results[n] = rec
        return results  # type: ignore[return-value]

    def _resolve(self, req: Request) -> _Resolved:
        if not isinstance(req.k, int) or isinstance(req.k, bool) or req.k < 1:
            raise DataError(f"k must be a positive integer, got {req.k!r}")
        if isinstance(req.history, (str, bytes)) or not isinstance(req.history, Sequence):
            raise DataError("history must be a list of items, oldest first")
        if not req.history:
            raise DataError("history is empty: give at least one item id or title")
        entries = [HistoryEntry.parse(h, p) for p, h in enumerate(req.history)]
        ids: list[str] = []
        texts: list[str] = []
        unknown: list[str] = []
        cat = self.catalog
        with cat.locked():
            for e in entries:
                rec = cat.get(e.item_id) if e.item_id is not None else None
                if rec is not None:
                    ids.append(rec.item_id)
                    texts.append(cat.text_of(rec))
                elif e.title is not None:
                    texts.append(cat.format_title(e.title))
                else:
                    unknown.append(e.item_id)  # type: ignore[arg-type]
        if unknown:
            raise UnknownItemsError(list(dict.fromkeys(unknown)))
        return _Resolved(ids, texts, req.k, bool(req.exclude_history))

    def _set_queries(self, todo: list[_Resolved]) -> None:
        if self.mode == "lis":
            for r in todo:
                r.queries = [r.texts[-1]]
            return
        assert self._generate is not None
        prompts = [self._prompt(r.texts) for r in todo]
        self.generate_calls += 1
        outs = self._run_generate(prompts, todo)
        if len(outs) != len(prompts):
            raise RuntimeError(f"generator returned {len(outs)} results for {len(prompts)} prompts")
        for r, texts in zip(todo, outs):
            kept = [t.strip() for t in texts if t and t.strip()]
            # An all-empty generation would rank nothing; the last item's text is the best query left.
            r.queries = kept or [r.texts[-1]]
            r.source = "gloss" if kept else "lis"

    def _run_generate(self, prompts: list[str], todo: list[_Resolved]) -> list[list[str]]:
        assert self._generate is not None
        if self._trie is None:
            return self._generate(prompts)
        with self._lm_lock:
            self._trie.sync(self.catalog)  # items added or removed since the last request
            exclude = [self._trie.keys_of(r.ids) if r.exclude else [] for r in todo]
            return self._generate(prompts, exclude)

    def _search(self, todo: list[_Resolved]) -> list[Recommendation]:
        """The one ranking path (retrieve.ranking.rank_texts): LIS is its case of one text."""
        if self.hybrid:
            return self._search_hybrid(todo)
        method: Ranking = LIS if self.mode == "lis" else self.ranking
        rc = self.config.retrieve
        cat = self.catalog
        out: list[Recommendation] = []
        with cat.locked():
            exclude = [cat.positions(r.ids) if r.exclude else None for r in todo]
            res = rank_texts(cat.retriever, [r.queries for r in todo], [r.k for r in todo], method,
                             exclude=exclude, per_text_k=rc.per_text_k, rrf_k=rc.rrf_k)
            for u, r in enumerate(todo):
                items, sc = res.user(u)
                ranked = []
                for rank, (p, s) in enumerate(zip(items.tolist(), sc.tolist()), start=1):
                    found = tuple(r.queries[t] for t in res.found_by(u, p))
                    rec = cat.get(cat.id_at(p))
                    assert rec is not None
                    ranked.append(RecommendedItem(rank, rec.item_id, rec.title, float(s), found, (r.source,)))
                out.append(Recommendation(ranked, list(r.queries), self.mode, cat.version))
        return out


    def _search_hybrid(self, todo: list[_Resolved]) -> list[Recommendation]:
        """Text lists (LIS; the generated texts in LM mode) and each ID model's list, fused as
        offline (glossrec.hybrid: weighted rrf or interleaving). A model's items are mapped to
        the live catalog by id: an item removed since training drops out, an item added since
        is reachable through the text lists only."""
        from glossrec.hybrid import IdComponent, build_lists, fuse

        hc = self.config.hybrid
        k = max(r.k for r in todo)
        cat = self.catalog
        out: list[Recommendation] = []
        with cat.locked():
            exclude = [cat.positions(r.ids) if r.exclude else None for r in todo]
            models = []
            for model, ids, mpos in self._id_models:
                hist = [[mpos[i] for i in r.ids if i in mpos] for r in todo]
                mex = [np.asarray(h, dtype=np.int64) if r.exclude else np.zeros(0, np.int64)
                       for h, r in zip(hist, todo)]
                models.append(IdComponent(model, hist, mex, lambda p, ids=ids: cat.position_each(
                    [ids[i] if i >= 0 else "" for i in p])))
            comps = build_lists(hc, max(hc.depth, k), retriever=cat.retriever,
                                last_texts=[r.texts[-1] for r in todo], exclude=exclude,
                                texts=[r.queries for r in todo] if self.mode == "lm" else None,
                                models=models, fixed=True, ranking=self.config.retrieve.ranking)
            labels = [_row_labels(c, todo) for c in comps]
            items, scores = fuse(comps, hc, k, self.config.retrieve.rrf_k)
            # A component with no share takes no part in the fusion: it found nothing.
            used = [(c, labs) for c, labs in zip(comps, labels) if hc.share(c.name) > 0]
            for u, r in enumerate(todo):
                ranked_items = []
                for rank, (p, sc) in enumerate(zip(items[u].tolist(), scores[u].tolist()), start=1):
                    if p < 0 or rank > r.k:
                        break
                    hits = [(c.name, labs[row]) for c, labs in used
                            for row in range(c.offsets[u], c.offsets[u + 1]) if p in c.rows[row]]
                    found = tuple(dict.fromkeys(lab for _, labs in hits for lab in labs))
                    sources = tuple(dict.fromkeys(name for name, _ in hits))
                    rec = cat.get(cat.id_at(p))
                    assert rec is not None
                    ranked_items.append(RecommendedItem(rank, rec.item_id, rec.title, float(sc),
                                                        found, sources))
                out.append(Recommendation(ranked_items, list(r.queries), self.mode, cat.version))
        return out


def _row_labels(c: Lists, todo: Sequence[_Resolved]) -> list[list[str]]:
    """Per row of a hybrid component, the query texts (or <model>) its items were found by:
    the last item's text for LIS; for the LM, one text per row, or all of the user's texts
    where its rows are the user's one list (interleaving)."""
    out: list[list[str]] = []
    for u, r in enumerate(todo):
        n = int(c.offsets[u + 1] - c.offsets[u])
        if c.name == "lis":
            out += [[r.texts[-1]]] * n
        elif c.name == "gloss":
            out += [[q] for q in r.queries] if n == len(r.queries) else [list(r.queries)] * n
        else:
            out += [[f"<{c.name}>"]] * n
    return out


def _hybrid_models(cfg: RunConfig) -> list[tuple[Any, list[str]]]:
    """The ID-based models a hybrid run's config names (hybrid.models), with their item ids."""
    from glossrec.baselines import load_item_ids
    from glossrec.hybrid import load_id_model

    return [(load_id_model(run), load_item_ids(RunDir(run).baseline)) for run in cfg.hybrid.models]
