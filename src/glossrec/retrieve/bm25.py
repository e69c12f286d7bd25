"""BM25 retrieval with bm25s's exact scores, computed for many queries at once.

bm25s builds the index (tokenisation, idf, term-frequency saturation), so the numbers are its
numbers; what this module adds is a vectorised search. bm25s scores one query by starting from
zeros and adding, term by term in query order (a repeated term twice), the term's precomputed
column of document scores. :func:`score_block` does the same float32 additions in the same order
for a whole block of queries: one pass per query-term position, a dense row add for frequent
terms (e.g. "title", in every "Title: ..." text) and a scatter for the rest. Every score is
therefore bit-equal to ``bm25s.BM25.get_scores`` and ties are real ties, which
:func:`~glossrec.retrieve.base.topk` breaks by catalog position.

Add/remove re-tokenise only the changed texts, but BM25's idf and average length depend on the
whole corpus, so the score matrix is rebuilt (lazily, at the next search): 0.4-0.5 s for the
12k-item Beauty catalog. ``save`` stores ids, texts and settings only; ``load`` re-tokenises
(0.2 s for Beauty) and the first search rebuilds the matrix: under a second, and the saved
format stays independent of bm25s's internal arrays and their versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.errors import ConfigError, import_optional
from glossrec.retrieve.base import ItemRetriever, rows_per_chunk
from glossrec.retrieve.items import ItemTable, check_items
from glossrec.retrieve.store import open_saved, write_items, write_meta

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
    import bm25s

    n_docs = len(tokens)
    if not any(tokens):  # no term at all: bm25s cannot index it, and every score is 0
        return ScoreMatrix(np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                           {}, np.zeros(0, np.int64), np.zeros((1, n_docs), np.float32), None, n_docs)
    bm = bm25s.BM25(k1=k1, b=b, method=method)
    bm.index(list(tokens), show_progress=False)
    sc = bm.scores
    indptr = np.asarray(sc["indptr"], dtype=np.int64)
    indices = np.asarray(sc["indices"], dtype=np.int64)
    data = np.asarray(sc["data"], dtype=np.float32)
    n_terms = len(indptr) - 1
    # bm25s appends an empty-string term beyond the matrix; queries never contain it.
    vocab = {t: i for t, i in bm.vocab_dict.items() if i < n_terms}
    df = np.diff(indptr)
    max_heavy = HEAVY_BUDGET_BYTES // (4 * max(n_docs, 1))
    heavy_terms = np.nonzero(df * HEAVY_RATIO > n_docs)[0]
    heavy_terms = heavy_terms[np.argsort(-df[heavy_terms], kind="stable")][:max_heavy]
    heavy_of = np.full(n_terms, -1, dtype=np.int64)
    heavy_of[heavy_terms] = np.arange(len(heavy_terms))
    heavy = np.zeros((len(heavy_terms) + 1, n_docs), dtype=np.float32)
    for row, t in enumerate(heavy_terms.tolist()):
        heavy[row, indices[indptr[t]:indptr[t + 1]]] = data[indptr[t]:indptr[t + 1]]
    nonocc = getattr(bm, "nonoccurrence_array", None)
    nonocc = None if nonocc is None else np.asarray(nonocc, dtype=np.float32)
    return ScoreMatrix(indptr, indices, data, vocab, heavy_of, heavy, nonocc, n_docs)


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


class BM25Retriever(ItemRetriever):
    """BM25 (bm25s) over item texts; defaults are the GLoSS reference code's.

    stopwords: a bm25s language code ("en") or a list of words, or None; stemmer: a PyStemmer
    algorithm name ("english") or None; method/k1/b: bm25s's scoring variant and parameters.
    """

    kind = "bm25"

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
        self._matrix: ScoreMatrix | None = None

    # ----------------------------------------------------------------- items
    def settings(self) -> dict[str, Any]:
        return {"stopwords": self.stopwords, "stemmer": self.stemmer, "method": self.method,
                "k1": self.k1, "b": self.b}

    def index(self, ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        table = ItemTable(*check_items(ids, texts))
        self._tokens = self._tokenize(table.texts, show_progress)
        self._items, self._matrix = table, None

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        ids, texts = check_items(ids, texts)
        new_tokens = self._tokenize([texts[j] for j in ItemTable.last_occurrences(ids).tolist()], False)
        _, positions = self._items.upsert(ids, texts)
        for p, toks in zip(positions.tolist(), new_tokens):
            if p < len(self._tokens):
                self._tokens[p] = toks
            else:
                self._tokens.append(toks)
        self._matrix = None

    def remove(self, ids: Sequence[str]) -> None:
        keep = self._items.remove(ids)
        self._tokens = [t for t, k in zip(self._tokens, keep.tolist()) if k]
        self._matrix = None

    # ----------------------------------------------------------------- scoring
    def matrix(self) -> ScoreMatrix:
        """The score matrix, rebuilt here if items changed since the last search."""
        if self._matrix is None:
            self._matrix = build_matrix(self._tokens, self.k1, self.b, self.method)
        return self._matrix

    def score_all(self, texts: Sequence[str]) -> np.ndarray:
        """Full float32 [n, n_items] score rows (bit-equal to bm25s's get_scores); small n only."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self)), dtype=np.float32)
        return score_block(self.matrix(), *self._query_terms(texts))

    def search(self, texts: Sequence[str], k: int, exclude: Sequence[np.ndarray] | None = None,
               show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        step = rows_per_chunk(len(self), BLOCK_BUDGET_BYTES)
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

    def _query_terms(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Known corpus term ids of each query, in order (unknown terms dropped, as bm25s does)."""
        import bm25s

        m = self.matrix()
        tok = bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self._stemmer_obj,
                             return_ids=True, show_progress=False)
        lut = np.full(len(tok.vocab), -1, dtype=np.int64)
        for term, i in tok.vocab.items():
            lut[i] = m.vocab.get(term, -1)
        lens = np.fromiter(map(len, tok.ids), dtype=np.int64, count=len(tok.ids))
        terms = lut[np.fromiter((t for q in tok.ids for t in q), dtype=np.int64, count=int(lens.sum()))]
        known = terms >= 0
        rows = np.repeat(np.arange(len(lens)), lens)[known]
        return terms[known], np.bincount(rows, minlength=len(lens)).astype(np.int64)

    # ----------------------------------------------------------------- persistence
    def write(self, folder: Path) -> None:
        write_meta(folder, self.kind, self.settings(), len(self))
        write_items(folder, self._items)

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
