"""Dense retrieval whose search runs in a FAISS index: exact ``IndexFlatIP`` by default, or an
approximate HNSW / IVF index for large catalogs (``retrieve.faiss_index``).

Same encoder, embeddings, items and storage as :class:`~glossrec.retrieve.dense.DenseRetriever`
(the saved folder holds the embeddings, never a FAISS binary); only ``search_embeddings``
differs. The FAISS index is rebuilt from the embeddings after a load, add or remove (a copy of
the matrix: milliseconds for 12k items).

FAISS only proposes candidates. Its float32 scores depend on the SIMD path it takes (on an
AVX-512 machine three items tied with a query got two different scores, depending on where they
sit in the index), so ordering by them would break the project's tie rule on some CPUs. Instead:

- each row fetches ``2k + len(exclude[i])`` candidates (at most the catalog) and rescores them in
  float64 (products of float32 numbers are exact there, so items tied in exact arithmetic get
  equal scores whatever the summation order), rounded to the float32 scores that are returned;
- excluded positions are dropped, and the best k are taken by
  :func:`~glossrec.retrieve.base.topk` over the candidates in position order: ordered by
  (score desc, position asc), the rule of every backend;
- a candidate list is complete only if no item FAISS left out can score as high as the k-th
  kept one. An item it left out has a FAISS score of at most the deepest fetched score ``d``;
  a float32 dot product of dimension n errs by at most about ``n * 2**-24 * |q| * |x|``, so the
  row is accepted when its k-th score exceeds ``d`` by more than ``(n + 2) * 2**-23 * |q| *
  max|x|`` (twice that bound), and fetched again with twice the depth otherwise, up to the whole
  catalog, which is always complete. A near-tie at the cut-off, or ties wider than the fetch,
  thus cost a deeper search, never a wrong answer.

Scores equal DenseRetriever's up to float32 rounding (its float32 products can differ in the
last bit), so items whose scores differ only in that bit may order differently between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from glossrec.config import EMBEDDED_ENCODER
from glossrec.errors import ConfigError, import_optional
from glossrec.retrieve.base import NEG_INF, empty_results, topk
from glossrec.retrieve.dense import DenseRetriever

ROWS_PER_CALL = 2048
RESCORE_BUDGET_BYTES = 32 << 20
"""Memory for one block of gathered float64 candidate embeddings while rescoring."""


def import_faiss() -> Any:
    return import_optional("faiss", "faiss", "retrieve.faiss = true", package="faiss-cpu")


IndexType = Literal["flat", "hnsw", "ivf"]


class FaissRetriever(DenseRetriever):
    """DenseRetriever with search in a FAISS index (see module docstring).

    index_type: ``flat`` (exact, IndexFlatIP, the default), ``hnsw`` (IndexHNSWFlat: graph
    search, ``hnsw_m`` links per node, ``ef_construction`` / ``ef_search`` beam widths) or
    ``ivf`` (IndexIVFFlat: ``nlist`` k-means cells, None = 4 sqrt(n); ``nprobe`` searched per
    query). The approximate kinds may miss items: their candidates are rescored exactly, but
    the completeness check is only for ``flat``; bench/scale.py measures their recall against it.
    Adding items adds them to the index; a removal or a replaced text rebuilds it.
    """

    kind = "faiss"

    def __init__(self, encoder: str = EMBEDDED_ENCODER, e5_prefixes: bool = False,
                 batch_size: int = 256, device: str | None = None, index_type: IndexType = "flat",
                 hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 256,
                 nlist: int | None = None, nprobe: int = 32) -> None:
        import_faiss()  # fail at configuration time, not at the first search
        super().__init__(encoder, e5_prefixes, batch_size, device)
        if index_type not in ("flat", "hnsw", "ivf"):
            raise ConfigError(f"retrieve.faiss_index must be flat, hnsw or ivf, got {index_type!r}")
        self.index_type: IndexType = index_type
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.nlist, self.nprobe = nlist, nprobe
        self._faiss: Any = None
        self._slack = 0.0
        self._max_norm = 0.0

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "index_type": self.index_type, "hnsw_m": self.hnsw_m,
                "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "nlist": self.nlist, "nprobe": self.nprobe}

    def _changed(self) -> None:
        self._faiss = None

    def _appended(self, start: int) -> None:
        """New rows go into the existing index (no rebuild: adding an item is O(dim) for flat
        and IVF, O(log n) graph work for HNSW)."""
        if self._faiss is None:
            return
        new = self._emb[start:]
        self._faiss.add(new)
        self._note_norms(new)

    def _note_norms(self, rows: np.ndarray) -> None:
        for s in range(0, len(rows), 65536):  # in blocks: a float64 copy of 1M rows is 3 GB
            block = rows[s:s + 65536].astype(np.float64)
            self._max_norm = max(self._max_norm, float(np.sqrt((block * block).sum(axis=1)).max()))
        # Twice the bound on |FAISS's float32 score - our score| per unit query norm.
        self._slack = (int(self._emb.shape[1]) + 2) * 2.0 ** -23 * self._max_norm

    def faiss_index(self) -> Any:
        """The FAISS index over the current embeddings (built on first use after a change)."""
        if self._faiss is None:
            self._faiss = self._build(int(self._emb.shape[1]))
            self._max_norm = 0.0
            self._note_norms(self._emb)
        return self._faiss

    def _build(self, dim: int) -> Any:
        faiss = import_faiss()
        emb = self._emb
        if self.index_type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
        elif self.index_type == "ivf":
            nlist = self.nlist or max(1, int(4 * np.sqrt(max(len(emb), 1))))
            nlist = max(1, min(nlist, len(emb)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            if len(emb):
                # k-means on a sample: 64 points per cell is what FAISS asks for, and enough.
                rng = np.random.default_rng(0)
                sample = emb if len(emb) <= 64 * nlist else emb[np.sort(rng.choice(len(emb), 64 * nlist, replace=False))]
                index.train(np.ascontiguousarray(sample))
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(emb)
        return index

    def _tune_search(self, index: Any, depth: int) -> None:
        if self.index_type == "hnsw":
            index.hnsw.efSearch = max(self.ef_search, depth)
        elif self.index_type == "ivf":
            index.nprobe = self.nprobe

    def search_embeddings(self, emb: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None,
                          show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        emb = self._check_queries(emb)
        return self._search_chunks(emb, k, exclude, ROWS_PER_CALL, self._search_rows,
                                   "faiss search", show_progress)

    def _search_rows(self, q: np.ndarray, k: int,
                     exclude: Sequence[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        excl = None if exclude is None else [np.asarray(x, dtype=np.int64) for x in exclude]
        n_items = len(self)
        index = self.faiss_index()
        n_excl = np.zeros(len(q), dtype=np.int64) if excl is None else np.array([len(x) for x in excl])
        depth = np.minimum(n_items, 2 * k + n_excl)
        margin = self._slack * np.linalg.norm(q.astype(np.float64), axis=1)
        out_idx, out_sc = empty_results(len(q), k)
        todo = np.arange(len(q))
        while len(todo):
            fetch = int(depth[todo].max())
            self._tune_search(index, fetch)
            dist, lab = index.search(q[todo], fetch)
            sub_ex = None if excl is None else [excl[i] for i in todo.tolist()]
            idx, sc = self._rescore(q[todo], lab.astype(np.int64), k, sub_ex)
            if fetch >= n_items or self.index_type != "flat":  # complete, or approximate anyway
                again = np.zeros(len(todo), dtype=bool)
            else:
                kth = sc[:, k - 1].astype(np.float64)  # -inf when fewer than k were kept
                again = ~(kth > dist[:, -1].astype(np.float64) + margin[todo])
            done = todo[~again]
            out_idx[done], out_sc[done] = idx[~again], sc[~again]
            todo = todo[again]
            depth[todo] = min(n_items, 2 * fetch)
        return out_idx, out_sc

    def _rescore(self, q: np.ndarray, lab: np.ndarray, k: int,
                 excl: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """Top k of the candidate positions `lab` [rows, m] by float64 score, ties -> lower position."""
        rows, m = lab.shape
        big = np.iinfo(np.int64).max
        lab = np.sort(np.where(lab < 0, big, lab), axis=1)  # columns in position order
        valid = lab != big
        safe = np.where(valid, lab, 0)
        q64 = q.astype(np.float64)
        scores = np.empty((rows, m), dtype=np.float32)
        step = max(1, RESCORE_BUDGET_BYTES // max(1, 8 * m * self._emb.shape[1]))
        for s in range(0, rows, step):
            cand = self._emb[safe[s:s + step]].astype(np.float64)  # [step, m, dim]
            scores[s:s + step] = np.einsum("rmd,rd->rm", cand, q64[s:s + step])
        scores[~valid] = NEG_INF
        if excl is not None:
            for r, x in enumerate(excl):
                if len(x):
                    scores[r, np.isin(lab[r], x)] = NEG_INF
        cols, sc = topk(scores, k)  # column order is position order, so its tie-break is ours
        idx = np.where(cols >= 0, np.take_along_axis(lab, np.maximum(cols, 0), axis=1), -1)
        return idx, sc
