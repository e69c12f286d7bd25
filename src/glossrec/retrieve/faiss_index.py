"""Dense retrieval whose search runs in a FAISS ``IndexFlatIP`` (exact inner product).

Same encoder, embeddings, items and storage as :class:`~glossrec.retrieve.dense.DenseRetriever`
(the saved folder holds the embeddings, never a FAISS binary); only ``search_embeddings``
differs. The FAISS index is rebuilt from the embeddings after a load, add or remove (a copy of
the matrix: milliseconds for 12k items).

What it guarantees, given FAISS's own float32 scores (which can differ from numpy's product in
the last bit, so near-ties may order differently from DenseRetriever):

- excluded positions never appear: each row fetches ``k + len(exclude[i])`` (at most the
  catalog), drops the excluded ones and keeps the best k;
- results are ordered by (score desc, position asc), like :func:`~glossrec.retrieve.base.topk`;
- when the k-th kept score equals the lowest fetched score (so a tied item with a lower
  position could have been cut by FAISS's heap), the row is fetched again with twice the depth,
  up to the whole catalog; the tie-break is then exactly "lower position first".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from glossrec.config import EMBEDDED_ENCODER
from glossrec.errors import ConfigError
from glossrec.retrieve import check_search_args
from glossrec.retrieve.base import NEG_INF
from glossrec.retrieve.dense import DenseRetriever, _empty

ROWS_PER_CALL = 2048


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ConfigError("retrieve.faiss = true needs FAISS, which is not installed: "
                          "pip install faiss-cpu (or pip install 'glossrec[faiss]')") from None
    return faiss


class FaissRetriever(DenseRetriever):
    """DenseRetriever with search in a FAISS exact inner-product index (see module docstring)."""

    kind = "faiss"

    def __init__(self, encoder: str = EMBEDDED_ENCODER, e5_prefixes: bool = False,
                 batch_size: int = 256, device: str | None = None) -> None:
        import_faiss()  # fail at configuration time, not at the first search
        super().__init__(encoder, e5_prefixes, batch_size, device)
        self._faiss: Any = None

    def _changed(self) -> None:
        self._faiss = None

    def faiss_index(self) -> Any:
        """The IndexFlatIP over the current embeddings (rebuilt after a change)."""
        if self._faiss is None:
            faiss = import_faiss()
            index = faiss.IndexFlatIP(int(self._emb.shape[1]))
            index.add(self._emb)
            self._faiss = index
        return self._faiss

    def search_embeddings(self, emb: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None,
                          show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        emb = self._check_queries(emb)
        n = len(emb)
        check_search_args(n, k, exclude)
        out_idx, out_sc = _empty(n, k)
        if n == 0 or len(self) == 0 or k == 0:
            return out_idx, out_sc
        with tqdm(total=n, desc="faiss search", unit="query", disable=not show_progress) as bar:
            for s in range(0, n, ROWS_PER_CALL):
                q = emb[s:s + ROWS_PER_CALL]
                excl = None if exclude is None else [np.asarray(x, dtype=np.int64)
                                                     for x in exclude[s:s + len(q)]]
                idx, sc = self._search_rows(q, k, excl)
                out_idx[s:s + len(q)], out_sc[s:s + len(q)] = idx, sc
                bar.update(len(q))
        return out_idx, out_sc

    def _search_rows(self, q: np.ndarray, k: int,
                     excl: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        n_items = len(self)
        n_excl = np.zeros(len(q), dtype=np.int64) if excl is None else np.array([len(x) for x in excl])
        depth = np.minimum(n_items, k + n_excl)
        out_idx, out_sc = _empty(len(q), k)
        todo = np.arange(len(q))
        while len(todo):
            fetch = int(depth[todo].max())
            dist, lab = self.faiss_index().search(q[todo], fetch)
            sub_ex = None if excl is None else [excl[i] for i in todo.tolist()]
            idx, sc, tied = _select(dist, lab.astype(np.int64), k, sub_ex)
            # Rows whose k-th result ties with the deepest fetched one go again, deeper.
            again = tied & (fetch < n_items)
            done = todo[~again]
            out_idx[done], out_sc[done] = idx[~again], sc[~again]
            todo = todo[again]
            depth[todo] = np.minimum(n_items, 2 * fetch)
        return out_idx, out_sc


def _select(dist: np.ndarray, lab: np.ndarray, k: int,
            excl: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop excluded labels, order by (score desc, position asc), keep k; flag boundary ties."""
    dist = dist.astype(np.float32, copy=True)
    deepest = dist[:, -1].copy()
    dist[lab < 0] = NEG_INF
    if excl is not None:
        for r, x in enumerate(excl):
            if len(x):
                dist[r, np.isin(lab[r], x)] = NEG_INF
    big = np.iinfo(np.int64).max
    lab = np.where(np.isfinite(dist), lab, big)
    order = np.lexsort((lab, -dist), axis=-1)
    dist = np.take_along_axis(dist, order, axis=1)[:, :k]
    lab = np.take_along_axis(lab, order, axis=1)[:, :k]
    lab[lab == big] = -1
    if dist.shape[1] < k:
        pad = k - dist.shape[1]
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=NEG_INF)
        lab = np.pad(lab, ((0, 0), (0, pad)), constant_values=-1)
    kth = dist[:, k - 1]
    tied = np.isfinite(kth) & (kth <= deepest)
    return lab, dist, tied
