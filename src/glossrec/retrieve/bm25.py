"""BM25 retrieval with bm25s's exact scores, computed for many queries at once, kept exact
through live writes.

bm25s builds the index (tokenisation, idf, term-frequency saturation), so the numbers are its
numbers; what this module adds is a vectorised search. bm25s scores one query by starting from
zeros and adding, term by term in query order (a repeated term twice), the term's precomputed
column of document scores. :func:`score_block` does the same float32 additions in the same order
for a whole block of queries: one pass per query-term position, a dense row add for frequent
terms (e.g. "title", in every "Title: ..." text) and a scatter for the rest. Every score is
therefore bit-equal to ``bm25s.BM25.get_scores`` and ties are real ties, which
:func:`~glossrec.retrieve.base.topk` breaks by catalog position.

Live writes (add/remove) cost O(change), as in a search engine's segments:

- the **main segment** is bm25s's score matrix over the catalog as of the last compaction,
  plus, per (term, document) entry, the id of its (document length, term frequency) pair;
- added (and replaced) documents go to a small **delta segment** (per-term postings of
  (slot, pair id)); removed (and replaced) documents are switched off in a **deletion mask**;
- the **collection statistics** of the live catalog (document count N, total length, document
  frequency of every term) are counters updated by each write.

A document's score for term t is ``float32(idf(df_t, N) * tfc(tf, dl, avgdl))`` (bm25l/bm25+
also subtract the term's non-occurrence score): it depends on the collection only through N,
avgdl = total / N and df_t. So between compactions the search takes an **exact path**: for each
query term it recomputes the term's column from the live counters, through bm25s's own idf and
tfc functions called with the same argument types bm25s uses when it indexes (tfc once per
distinct document length, over the distinct term frequencies: a few hundred calls per write, not
one per posting). The column is then summed in bm25s's order by :func:`score_block`. Scores are
therefore bit-equal, at every moment, to bm25s re-indexed on the live catalog (tested for every
method after adds, replacements and removals): there is no approximation to bound. The
recomputed columns are cached until the next write, so steady searches cost what they did.

With no pending writes the main matrix is used as is (the original fast path, bit-equal by
construction). :meth:`BM25Retriever.compact` rebuilds the main segment over the live catalog
(O(catalog)); it runs by itself, in a background thread, once the pending documents (delta plus
deleted) exceed ``compact_fraction`` of the catalog and ``compact_min``: searches and writes go
on against the old segments meanwhile, and the writes made during the rebuild are replayed onto
the new segments before they are swapped in under the lock.

``save`` stores ids, texts and settings only; ``load`` re-tokenises and the first search builds
the matrix, and the saved format stays independent of bm25s's internal arrays and their
versions. A live catalog persists writes in its own journal, replayed through ``add``/``remove``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.errors import ConfigError, import_optional
from glossrec.retrieve.base import FrozenRetriever, ItemRetriever, rows_per_chunk
from glossrec.retrieve.items import ItemTable, check_items
from glossrec.retrieve.store import open_saved

logger = logging.getLogger(__name__)

METHODS = ("robertson", "lucene", "atire", "bm25l", "bm25+")
HEAVY_RATIO = 32
"""A term found in more than 1/32 of the documents is added as a dense row: at that density a
vector add is cheaper than a scatter (all Beauty LIS queries: 0.88 s to score at 1/32, 1.0 s at
1/16, 0.91 s at 1/64)."""
HEAVY_BUDGET_BYTES = 64 << 20
BLOCK_BUDGET_BYTES = 64 << 20
"""Memory of one dense [queries, items] float32 score block."""


@dataclass(frozen=True)
class ScoreMatrix:
    """bm25s's per-(term, document) scores, by term, plus dense rows for frequent terms.

    bm25s stores a CSC [documents x terms] matrix; its arrays read as CSR [terms x documents].
    """

    indptr: np.ndarray
    """int64 [n_terms + 1]"""
    indices: np.ndarray
    """int64 [nnz] document positions"""
    data: np.ndarray
    """float32 [nnz]"""
    vocab: dict[str, int]
    heavy_of: np.ndarray
    """int64 [n_terms]: the term's row in `heavy`, or -1."""
    heavy: np.ndarray
    """float32 [h + 1, n_docs] dense rows of frequent terms; the last row is zeros."""
    nonoccurrence: np.ndarray | None
    """bm25l / bm25+: per-term score of an absent term (bm25s adds their sum to every doc)."""
    n_docs: int


def build_matrix(tokens: Sequence[list[str]], k1: float, b: float, method: str) -> ScoreMatrix:
    """Index tokenised documents with bm25s and keep its score arrays."""
    return build_main(tokens, k1, b, method)[0]


def build_main(tokens: Sequence[list[str]], k1: float, b: float,
               method: str) -> tuple[ScoreMatrix, np.ndarray | None]:
    """bm25s's score matrix and, aligned with its entries, each entry's (length, tf) pair key
    ``dl * PAIR_BASE + tf`` (None when no document has a term)."""
    import bm25s

    n_docs = len(tokens)
    if not any(tokens):  # no term at all: bm25s cannot index it, and every score is 0
        return ScoreMatrix(np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                           {}, np.zeros(0, np.int64), np.zeros((1, n_docs), np.float32), None,
                           n_docs), None
    bm = bm25s.BM25(k1=k1, b=b, method=method)
    bm.index(list(tokens), show_progress=False)
    sc = bm.scores
    indptr = np.asarray(sc["indptr"], dtype=np.int64)
    indices = np.asarray(sc["indices"], dtype=np.int64)
    data = np.asarray(sc["data"], dtype=np.float32)
    n_terms = len(indptr) - 1
    # bm25s appends an empty-string term beyond the matrix; queries never contain it.
    vocab = {t: i for t, i in bm.vocab_dict.items() if i < n_terms}
    heavy_of, heavy = heavy_rows(indptr, indices, data, n_docs)
    nonocc = getattr(bm, "nonoccurrence_array", None)
    nonocc = None if nonocc is None else np.asarray(nonocc, dtype=np.float32)
    return (ScoreMatrix(indptr, indices, data, vocab, heavy_of, heavy, nonocc, n_docs),
            _pair_keys(tokens, vocab, indptr, indices))


def heavy_rows(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
               n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """(heavy_of, heavy) of :class:`ScoreMatrix`: dense rows of the terms in more than
    1/HEAVY_RATIO of the documents, most frequent first, within HEAVY_BUDGET_BYTES."""
    n_terms = len(indptr) - 1
    df = np.diff(indptr)
    max_heavy = HEAVY_BUDGET_BYTES // (4 * max(n_docs, 1))
    heavy_terms = np.nonzero(df * HEAVY_RATIO > n_docs)[0]
    heavy_terms = heavy_terms[np.argsort(-df[heavy_terms], kind="stable")][:max_heavy]
    heavy_of = np.full(n_terms, -1, dtype=np.int64)
    heavy_of[heavy_terms] = np.arange(len(heavy_terms))
    heavy = np.zeros((len(heavy_terms) + 1, n_docs), dtype=np.float32)
    for row, t in enumerate(heavy_terms.tolist()):
        heavy[row, indices[indptr[t]:indptr[t + 1]]] = data[indptr[t]:indptr[t + 1]]
    return heavy_of, heavy


PAIR_BASE = 1 << 32
"""A (document length, term frequency) pair is keyed ``dl * PAIR_BASE + tf``."""


def _pair_keys(tokens: Sequence[list[str]], vocab: dict[str, int], indptr: np.ndarray,
               indices: np.ndarray) -> np.ndarray:
    """Each matrix entry's (dl, tf) key, in the matrix's (term, document) order."""
    lens = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    flat = np.fromiter((vocab[t] for doc in tokens for t in doc), dtype=np.int64, count=int(lens.sum()))
    docs = np.repeat(np.arange(len(tokens), dtype=np.int64), lens)
    keys, tf = np.unique(flat * len(tokens) + docs, return_counts=True)  # by term, then document
    terms = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    if len(keys) != len(indices) or not np.array_equal(keys, terms * len(tokens) + indices):
        raise AssertionError("bm25s's matrix entries differ from the token counts")
    return lens[indices] * PAIR_BASE + tf


def score_block(m: ScoreMatrix, terms: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Dense float32 [len(lens), n_docs] scores of queries given as concatenated term ids.

    `terms` holds each query's known term ids in query order (repeats kept), `lens` their
    counts. Bit-equal to bm25s: same float32 additions in the same order per (query, doc).
    """
    n, n_docs = len(lens), m.n_docs
    rows = np.repeat(np.arange(n, dtype=np.int64), lens)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    pos = np.arange(len(terms), dtype=np.int64) - starts[rows]
    hrow = m.heavy_of[terms]
    # Starting a row from a frequent first term's dense row is bm25s's 0 + x, bit for bit.
    init = np.full(n, len(m.heavy) - 1, dtype=np.int64)
    first = (pos == 0) & (hrow >= 0)
    init[rows[first]] = hrow[first]
    block = m.heavy[init]
    flat = block.reshape(-1)
    rest = np.nonzero(~first)[0]
    rest = rest[np.argsort(pos[rest], kind="stable")]
    bounds = np.searchsorted(pos[rest], np.arange(int(pos.max(initial=-1)) + 2))
    for p in range(len(bounds) - 1):
        sel = rest[bounds[p]:bounds[p + 1]]
        r, t, h = rows[sel], terms[sel], hrow[sel]
        dense = h >= 0
        # In-place row adds; a fancy-indexed `block[r] += heavy[h]` copies both (measured 3x slower).
        for rr, hh in zip(r[dense].tolist(), h[dense].tolist()):
            row = block[rr]
            np.add(row, m.heavy[hh], out=row)
        r, t = r[~dense], t[~dense]
        if len(r):
            st = m.indptr[t]
            ln = m.indptr[t + 1] - st
            off = np.repeat(st - (np.cumsum(ln) - ln), ln) + np.arange(int(ln.sum()), dtype=np.int64)
            flat[np.repeat(r * n_docs, ln) + m.indices[off]] += m.data[off]
    if m.nonoccurrence is not None:  # bm25s adds it after the terms, once per query
        ends = starts + lens
        for i in range(n):
            if lens[i]:
                block[i] += m.nonoccurrence[terms[starts[i]:ends[i]].astype(np.int32)].sum()
    return block


class Segments:
    """The main matrix, the delta segment, the deletion mask and the live collection counters.

    Slots number documents: the main segment's 0..n_main-1 (catalog positions at the build),
    then delta documents in the order written. ``pos_slot[p]`` is the slot of catalog position
    p; a slot no position points to is deleted (its postings stay until compaction, and are
    never gathered). Not thread-safe: the retriever serialises calls.
    """

    def __init__(self, tokens: Sequence[list[str]], k1: float, b: float, method: str) -> None:
        import bm25s
        from bm25s import scoring

        ref = bm25s.BM25(k1=k1, b=b, method=method)
        self.k1, self.b, self.delta = ref.k1, ref.b, ref.delta
        self.idf_fn = scoring._select_idf_scorer(ref.idf_method)
        self.tfc_fn = scoring._select_tfc_scorer(method)
        self.main, keys = build_main(tokens, k1, b, method)
        self.vocab: dict[str, int] = dict(self.main.vocab)
        self.df: list[int] = np.diff(self.main.indptr).tolist()
        """Live document frequency of every term (main terms first, then new ones)."""
        self.n_live = len(tokens)
        self.total = sum(map(len, tokens))
        """Token count of the live documents: avgdl = total / n_live, as bm25s computes it."""
        self.pos_slot = np.arange(len(tokens), dtype=np.int64)
        self.n_slots = len(tokens)
        uniq, inv = np.unique(np.zeros(0, np.int64) if keys is None else keys, return_inverse=True)
        self.pair_keys: list[int] = uniq.tolist()
        self.pair_of = {k: n for n, k in enumerate(self.pair_keys)}
        self.main_pair = inv.reshape(-1).astype(np.int32)
        """The (dl, tf) pair id of each main matrix entry."""
        self.delta_post: dict[int, tuple[list[int], list[int]]] = {}
        """term id -> (slots, pair ids) of the delta documents holding it."""
        self.pending = 0
        """Documents written or deleted since the build: 0 means the main matrix is exact."""
        self._columns: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
        self._pair_tfc: np.ndarray | None = None

    # ---- writes: O(change) -----------------------------------------------------------------
    def add(self, positions: Sequence[int], new: Sequence[list[str]],
            old: Sequence[list[str] | None]) -> None:
        """Documents written at these positions; old[i] are the tokens a write replaced (None
        for a new position, which is the next one)."""
        appended: list[int] = []
        for p, toks, prev in zip(positions, new, old):
            if prev is not None:
                self._drop(prev)
            slot = self._insert(toks)
            if prev is None:
                appended.append(slot)
            else:
                self.pos_slot[p] = slot
        if appended:
            self.pos_slot = np.concatenate([self.pos_slot, np.asarray(appended, dtype=np.int64)])
        self._changed()

    def remove(self, keep: np.ndarray, removed: Sequence[list[str]]) -> None:
        """Positions where `keep` is False are deleted; removed: their tokens, in order."""
        for toks in removed:
            self._drop(toks)
        self.pos_slot = self.pos_slot[keep]
        self._changed()

    def _insert(self, toks: list[str]) -> int:
        slot, dl = self.n_slots, len(toks)
        self.n_slots += 1
        for term, tf in Counter(toks).items():
            tid = self.vocab.setdefault(term, len(self.vocab))
            if tid == len(self.df):
                self.df.append(0)
            self.df[tid] += 1
            key = dl * PAIR_BASE + tf
            pid = self.pair_of.setdefault(key, len(self.pair_keys))
            if pid == len(self.pair_keys):
                self.pair_keys.append(key)
            slots, pids = self.delta_post.setdefault(tid, ([], []))
            slots.append(slot)
            pids.append(pid)
        self.n_live += 1
        self.total += dl
        self.pending += 1
        return slot

    def _drop(self, toks: list[str]) -> None:
        for term in set(toks):
            self.df[self.vocab[term]] -= 1
        self.n_live -= 1
        self.total -= len(toks)
        self.pending += 1

    def _changed(self) -> None:
        """N and avgdl moved, so every term's column did: drop the cached ones."""
        self._columns.clear()
        self._pair_tfc = None

    # ---- scoring -----------------------------------------------------------------------------
    def known(self, term: str) -> int:
        """The term's id if a live document holds it, else -1 (bm25s ignores such terms)."""
        tid = self.vocab.get(term, -1)
        return tid if tid >= 0 and self.df[tid] > 0 else -1

    def score(self, terms: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """float32 [len(lens), n_positions] scores of queries given as term ids (see score_block)."""
        if self.pending == 0:
            return score_block(self.main, terms, lens)
        uniq, local = np.unique(terms, return_inverse=True)
        block = score_block(self._query_matrix(uniq.tolist()), local.reshape(-1), lens)
        return block[:, self.pos_slot]

    def _query_matrix(self, tids: list[int]) -> ScoreMatrix:
        """A score matrix over all slots holding only these terms, from the live counters."""
        cols = [self._column(t) for t in tids]
        indptr = np.zeros(len(cols) + 1, dtype=np.int64)
        np.cumsum([len(c[0]) for c in cols], out=indptr[1:])
        indices = np.concatenate([c[0] for c in cols]) if cols else np.zeros(0, np.int64)
        data = np.concatenate([c[1] for c in cols]) if cols else np.zeros(0, np.float32)
        heavy_of, heavy = heavy_rows(indptr, indices, data, self.n_slots)
        nonocc = None if self.method_plain() else np.asarray([c[2] for c in cols], dtype=np.float32)
        return ScoreMatrix(indptr, indices, data, {}, heavy_of, heavy, nonocc, self.n_slots)

    def method_plain(self) -> bool:
        """True for the methods without a non-occurrence score (all but bm25l / bm25+)."""
        return self.tfc_fn.__name__ not in ("_score_tfc_bm25l", "_score_tfc_bm25plus")

    def _column(self, tid: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(slots, float32 scores, non-occurrence score) of a term over every slot holding it:
        the numbers bm25s computes for it when it indexes the live documents."""
        col = self._columns.get(tid)
        if col is not None:
            return col
        n, df = self.n_live, self.df[tid]
        avgdl = np.float64(self.total) / n  # np.mean of the integer lengths, as bm25s takes it
        idf = self.idf_fn(df, N=n)
        nonocc = 0.0
        pair_tfc = self._tfcs(avgdl)
        w = np.full(len(pair_tfc), idf, dtype=np.float32) * pair_tfc  # bm25s: idf_array[...] * tfc
        if not self.method_plain():
            nonocc_arr = np.zeros(1, dtype=np.float32)
            nonocc_arr[0] = idf * self.tfc_fn(tf_array=0, l_d=avgdl, l_avg=avgdl, k1=self.k1,
                                              b=self.b, delta=self.delta)
            nonocc = float(nonocc_arr[0])
            w -= np.full(len(w), nonocc_arr[0], dtype=np.float32)
        w32 = w.astype(np.float32)
        slots, pids = [], []
        if tid < len(self.main.indptr) - 1:
            a, z = self.main.indptr[tid], self.main.indptr[tid + 1]
            slots.append(self.main.indices[a:z])
            pids.append(self.main_pair[a:z])
        if tid in self.delta_post:
            ds, dp = self.delta_post[tid]
            slots.append(np.asarray(ds, dtype=np.int64))
            pids.append(np.asarray(dp, dtype=np.int32))
        col = (np.concatenate(slots), w32[np.concatenate(pids)], nonocc)
        self._columns[tid] = col
        return col

    def _tfcs(self, avgdl: np.floating) -> np.ndarray:
        """bm25s's term-frequency component of every (dl, tf) pair at this avgdl: one call of
        its tfc function per document length, with the types it passes (an int length, float32
        frequencies), so the values are its own."""
        if self._pair_tfc is None:
            keys = np.asarray(self.pair_keys, dtype=np.int64)
            dls, tfs = keys // PAIR_BASE, (keys % PAIR_BASE).astype(np.float32)
            order = np.argsort(dls, kind="stable")
            bounds = np.flatnonzero(np.diff(dls[order])) + 1
            out: np.ndarray | None = None
            for sel in np.split(order, bounds) if len(order) else []:
                v = self.tfc_fn(tf_array=tfs[sel], l_d=int(dls[sel[0]]), l_avg=avgdl, k1=self.k1,
                                b=self.b, delta=self.delta)
                if out is None:
                    out = np.empty(len(keys), dtype=v.dtype)
                out[sel] = v
            self._pair_tfc = np.zeros(0, np.float32) if out is None else out
        return self._pair_tfc


class BM25Retriever(ItemRetriever):
    """BM25 (bm25s) over item texts; defaults are the GLoSS reference code's.

    stopwords: a bm25s language code ("en") or a list of words, or None; stemmer: a PyStemmer
    algorithm name ("english") or None; method/k1/b: bm25s's scoring variant and parameters.

    ``compact_fraction`` / ``compact_min``: pending documents (added or deleted since the main
    segment was built) that start a compaction; ``background``: compact in a thread (else in
    the write that crosses the threshold).
    """

    kind = "bm25"
    compact_fraction = 0.05
    compact_min = 1000
    background = True

    def __init__(self, stopwords: str | Sequence[str] | None = "en", stemmer: str | None = None,
                 method: str = "lucene", k1: float = 1.5, b: float = 0.75) -> None:
        if method not in METHODS:
            raise ConfigError(f"retrieve.bm25_method: unknown BM25 method {method!r} "
                              f"(choose from {', '.join(METHODS)})")
        if not k1 >= 0 or not 0 <= b <= 1:
            raise ConfigError(f"retrieve.bm25_k1/bm25_b: need k1 >= 0 and 0 <= b <= 1, got {k1}, {b}")
        self.stopwords = stopwords if stopwords is None or isinstance(stopwords, str) else list(stopwords)
        self.stemmer = stemmer
        self.method, self.k1, self.b = method, float(k1), float(b)
        self._stemmer_obj = _load_stemmer(stemmer)
        self._tokenize(["check the stopwords setting"], False)
        self._items = ItemTable()
        self._tokens: list[list[str]] = []
        self._seg: Segments | None = None
        self._lock = threading.RLock()
        self._log: list[Callable[[Segments], None]] | None = None
        """Writes made while a compaction builds new segments, replayed onto them."""
        self._epoch = 0
        self._compactor: threading.Thread | None = None

    # ----------------------------------------------------------------- items
    def settings(self) -> dict[str, Any]:
        return {"stopwords": self.stopwords, "stemmer": self.stemmer, "method": self.method,
                "k1": self.k1, "b": self.b}

    def index(self, ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        table = ItemTable(*check_items(ids, texts))
        tokens = self._tokenize(table.texts, show_progress)
        with self._lock:
            self._tokens, self._items, self._seg = tokens, table, None
            self._epoch += 1  # a compaction under way builds a catalog that is gone

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        ids, texts = check_items(ids, texts)
        new_tokens = self._tokenize([texts[j] for j in ItemTable.last_occurrences(ids).tolist()], False)
        with self._lock:
            before = len(self._items)
            _, positions = self._items.upsert(ids, texts)
            pos = positions.tolist()
            old = [self._tokens[p] if p < before else None for p in pos]
            for p, toks in zip(pos, new_tokens):
                if p < before:
                    self._tokens[p] = toks
                else:
                    self._tokens.append(toks)
            self._apply(lambda seg: seg.add(pos, new_tokens, old))
        self._maybe_compact()

    def remove(self, ids: Sequence[str]) -> None:
        with self._lock:
            keep = self._items.remove(ids)
            removed = [t for t, k in zip(self._tokens, keep.tolist()) if not k]
            self._tokens = [t for t, k in zip(self._tokens, keep.tolist()) if k]
            self._apply(lambda seg: seg.remove(keep, removed))
        self._maybe_compact()

    def _apply(self, op: Callable[[Segments], None]) -> None:
        """Apply a write to the segments (if built) and log it for a compaction under way."""
        if self._seg is not None:
            op(self._seg)
        if self._log is not None:
            self._log.append(op)

    # ----------------------------------------------------------------- compaction
    @property
    def pending(self) -> int:
        """Documents added or deleted since the main segment was built."""
        return 0 if self._seg is None else self._seg.pending

    def compact(self) -> None:
        """Rebuild the main segment over the live catalog (O(catalog)); the scores are then
        bm25s's matrix's own. Waits for a background compaction under way first."""
        self.wait_compacted()
        self._compact()

    def wait_compacted(self) -> None:
        """Return once no background compaction is running."""
        thread = self._compactor
        if thread is not None:
            thread.join()

    def _maybe_compact(self) -> None:
        seg = self._seg
        if seg is None or seg.pending <= max(self.compact_min, self.compact_fraction * len(self)):
            return
        if not self.background:
            self._compact()
            return
        with self._lock:
            if self._compactor is not None and self._compactor.is_alive():
                return
            self._compactor = threading.Thread(target=self._compact_logged, name="bm25-compact",
                                               daemon=True)
            self._compactor.start()

    def _compact_logged(self) -> None:
        try:
            self._compact()
        except Exception:  # the old segments stay (exact); the next write tries again
            logger.exception("BM25 compaction failed")

    def _compact(self) -> None:
        """Build new segments from a snapshot of the tokens without holding the lock, then
        replay the writes made meanwhile and swap them in."""
        with self._lock:
            tokens, epoch, self._log = list(self._tokens), self._epoch, []
        try:
            t0 = time.perf_counter()
            seg = Segments(tokens, self.k1, self.b, self.method)
            with self._lock:
                if self._epoch == epoch:
                    for op in self._log or []:
                        op(seg)
                    self._seg = seg
                    logger.info("BM25 compaction: %d documents in %.1f s, %d writes replayed",
                                len(tokens), time.perf_counter() - t0, len(self._log or []))
        finally:
            with self._lock:
                self._log = None

    # ----------------------------------------------------------------- scoring
    def _segments(self) -> Segments:
        """The segments, built here on the first search after ``index``/``load``."""
        with self._lock:
            if self._seg is None:
                self._seg = Segments(self._tokens, self.k1, self.b, self.method)
            return self._seg

    def matrix(self) -> ScoreMatrix:
        """The main segment's score matrix (bm25s's, over the catalog as of its build)."""
        return self._segments().main

    def score_all(self, texts: Sequence[str]) -> np.ndarray:
        """Full float32 [n, n_items] score rows (bit-equal to bm25s's get_scores over the live
        catalog); small n only."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self)), dtype=np.float32)
        with self._lock:
            seg = self._segments()
            return seg.score(*self._query_terms(seg, texts))

    def search(self, texts: Sequence[str], k: int, exclude: Sequence[np.ndarray] | None = None,
               show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        seg = self._seg
        width = len(self) if seg is None else max(seg.n_slots, len(self))
        step = rows_per_chunk(2 * width if self.pending else width, BLOCK_BUDGET_BYTES)
        with self._lock:
            return self._search_chunks(list(texts), k, exclude, step, self._exact_topk(self.score_all),
                                       "BM25 search", show_progress)

    def _tokenize(self, texts: list[str], show_progress: bool) -> list[list[str]]:
        import bm25s

        if not texts:
            return []
        try:
            return bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self._stemmer_obj,
                                  return_ids=False, show_progress=show_progress)
        except ValueError as e:  # unknown stopword language
            raise ConfigError(f"retrieve.bm25_stopwords: {e}") from None

    def _query_terms(self, seg: Segments, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Live term ids of each query, in order (terms no live document holds dropped, as
        bm25s drops terms outside its vocabulary)."""
        import bm25s

        tok = bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self._stemmer_obj,
                             return_ids=True, show_progress=False)
        lut = np.full(len(tok.vocab), -1, dtype=np.int64)
        for term, i in tok.vocab.items():
            lut[i] = seg.known(term)
        lens = np.fromiter(map(len, tok.ids), dtype=np.int64, count=len(tok.ids))
        terms = lut[np.fromiter((t for q in tok.ids for t in q), dtype=np.int64, count=int(lens.sum()))]
        known = terms >= 0
        rows = np.repeat(np.arange(len(lens)), lens)[known]
        return terms[known], np.bincount(rows, minlength=len(lens)).astype(np.int64)

    # ----------------------------------------------------------------- persistence
    def frozen(self) -> FrozenRetriever:
        """Ids, texts and settings copied under the lock (the saved format has no arrays)."""
        with self._lock:
            return super().frozen()

    def write(self, folder: Path) -> None:
        with self._lock:
            super().write(folder)

    @classmethod
    def load(cls, folder: Path) -> BM25Retriever:
        r, _, items = open_saved(cls, folder)
        r.index(items.ids, items.texts)
        return r


def _load_stemmer(name: str | None) -> Any:
    if name is None:
        return None
    Stemmer = import_optional("Stemmer", "stemmer", "retrieve.bm25_stemmer", package="PyStemmer")
    try:
        return Stemmer.Stemmer(name)
    except KeyError:
        raise ConfigError(f"retrieve.bm25_stemmer: unknown stemmer {name!r} "
                          f"(PyStemmer knows: {', '.join(Stemmer.algorithms())})") from None
