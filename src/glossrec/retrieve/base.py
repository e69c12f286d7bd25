"""The retriever interface and the exact, deterministic top-k every backend shares.

Ties in score are broken by the lower catalog position (the order of the items file, or of
insertion for added items), so a run is reproducible: BM25 scores are exact sums, identical
across machines and batch sizes; dense scores are float32 matrix products whose last bits may
vary with the batch shape. Backends compute full score rows in chunks and call :func:`topk`.

:class:`ItemRetriever` is what the backends share: their item table (``ids``, ``texts``,
``len``) and the one chunked search loop (argument checks, empty results, progress bar) into
which each plugs its per-chunk scoring.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.retrieve.items import ItemTable
from glossrec.progress import bars_on

NEG_INF = np.float32(-np.inf)


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of each row of `scores`, highest score first, ties -> lower column first.

    Returns (indices [n, k] int64, scores [n, k] float32); rows with fewer than k finite scores
    are padded with index -1 and score -inf. Exact: every column tied with the k-th score is a
    candidate before the tie-break, unlike a bare argpartition.
    """
    n, m = scores.shape
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_sc = np.full((n, k), NEG_INF, dtype=np.float32)
    if n == 0 or m == 0 or k == 0:
        return out_idx, out_sc
    kk = min(k, m)
    kth = np.partition(scores, m - kk, axis=1)[:, m - kk]
    rows, cols = np.nonzero(scores >= kth[:, None])
    vals = scores[rows, cols]
    finite = np.isfinite(vals)  # only the candidates are checked: -inf marks excluded items
    if not finite.all():
        rows, cols, vals = rows[finite], cols[finite], vals[finite]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    # position of each candidate within its row
    starts = np.searchsorted(rows, np.arange(n))
    pos = np.arange(len(rows)) - starts[rows]
    keep = pos < kk
    out_idx[rows[keep], pos[keep]] = cols[keep]
    out_sc[rows[keep], pos[keep]] = vals[keep]
    return out_idx, out_sc


def mask_rows(scores: np.ndarray, exclude: Sequence[np.ndarray] | None, offset: int = 0) -> None:
    """Set scores of excluded columns to -inf in place; exclude[offset + r] masks row r."""
    if exclude is None:
        return
    for r in range(scores.shape[0]):
        cols = exclude[offset + r]
        if len(cols):
            scores[r, cols] = NEG_INF


def empty_results(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions [n, k] all -1, scores [n, k] all -inf): what a search finds in nothing."""
    return np.full((n, k), -1, dtype=np.int64), np.full((n, k), NEG_INF, dtype=np.float32)


def check_search_args(n_queries: int, k: int, exclude: Sequence[np.ndarray] | None) -> None:
    """Programming errors in search arguments fail loudly, before any work."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if exclude is not None and len(exclude) != n_queries:
        raise ValueError(f"exclude has {len(exclude)} rows for {n_queries} queries")


def rows_per_chunk(n_items: int, budget_bytes: int) -> int:
    """Query rows per dense float32 [rows, n_items] score block within the memory budget."""
    return max(1, min(4096, budget_bytes // max(4 * n_items, 1)))


@dataclass(frozen=True)
class FrozenRetriever:
    """A retriever's state at one moment, to write later: its ids in position order, and a
    ``write(folder)`` that writes that state (the files :meth:`Retriever.write` writes)
    whatever writes the retriever took since."""

    ids: Sequence[str]
    write: Callable[[Path], None]


class Retriever(ABC):
    """A searchable catalog of item texts, persisted to a folder (no pickle).

    Positions returned by :meth:`search` index :attr:`ids`; they equal catalog indices as long
    as the index was built from a :class:`~glossrec.data.Catalog` and not edited.
    """

    kind: str

    @property
    @abstractmethod
    def ids(self) -> list[str]: ...

    @abstractmethod
    def index(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        """(Re)build the index over these items."""

    @abstractmethod
    def search(self, texts: Sequence[str], k: int,
               exclude: Sequence[np.ndarray] | None = None,
               show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(positions [n, k], scores [n, k]) for each query; exclude[i] are positions to skip."""

    @abstractmethod
    def add(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Add new items (an existing id is replaced by its new text)."""

    @abstractmethod
    def remove(self, ids: Sequence[str]) -> None:
        """Remove items; unknown ids raise KeyError naming them."""

    @abstractmethod
    def write(self, folder: Path) -> None:
        """Write the index as plain files into `folder` (made by the caller, who owns
        atomicity: :meth:`save`, or the live catalog's version)."""

    def frozen(self) -> FrozenRetriever | None:
        """This state, to write later, taken cheaply (list copies, copy-on-write arrays): a
        live catalog takes it under its lock and writes its snapshot in the background. None:
        no cheap copy, so the caller writes while it keeps the retriever still."""
        return None

    def save(self, folder: Path) -> None:
        """Persist as a new version of `folder`: a crash mid-save leaves the previous index
        loadable (glossrec.io.Versions, through glossrec.retrieve.store)."""
        from glossrec.retrieve.store import save_versioned

        save_versioned(folder, self.write)

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> Retriever: ...

    def __len__(self) -> int:
        return len(self.ids)


RankChunk = Callable[[Any, int, Sequence[np.ndarray] | None], tuple[np.ndarray, np.ndarray]]
"""(query chunk, k, its rows of exclude or None) -> (positions [rows, k], scores [rows, k])."""
ScoreChunk = Callable[[Any], np.ndarray]
"""query chunk -> dense float32 scores [rows, n_items]."""


class ItemRetriever(Retriever):
    """A retriever over an :class:`ItemTable` (``self._items``), searched chunk by chunk."""

    _items: ItemTable

    @property
    def ids(self) -> list[str]:
        """Item ids by position (the live list: read, do not modify)."""
        return self._items.ids

    @property
    def texts(self) -> list[str]:
        return self._items.texts

    def __len__(self) -> int:
        return len(self._items)

    def settings(self) -> dict[str, Any]:
        """What the saved retriever.json keeps to rebuild this backend."""
        return {}

    def frozen(self) -> FrozenRetriever:
        """Settings, ids and texts as lists copied now, plus :meth:`_arrays` held still."""
        return self._writer(frozen=True)

    def write(self, folder: Path) -> None:
        self._writer(frozen=False).write(folder)

    def _writer(self, frozen: bool) -> FrozenRetriever:
        from glossrec.retrieve.store import write_array, write_items, write_meta

        kind, settings = self.kind, self.settings()
        ids, texts = self._items.ids, self._items.texts
        if frozen:
            ids, texts = list(ids), list(texts)
        arrays = self._arrays(frozen)

        def write(folder: Path) -> None:
            try:
                write_meta(folder, kind, settings, len(ids))
                write_items(folder, ids, texts)
                for name, arr in arrays.items():
                    write_array(folder / name, arr)
            finally:
                if frozen:
                    self._frozen_written()

        return FrozenRetriever(ids, write)

    def _arrays(self, frozen: bool) -> dict[str, np.ndarray]:
        """Per-item arrays to save (file name -> array); `frozen`: later writes must leave
        them as they are until :meth:`_frozen_written`."""
        return {}

    def _frozen_written(self) -> None:
        """A frozen copy has been written (or failed): its arrays need not stay still."""

    def _search_chunks(self, queries: Sequence[Any], k: int, exclude: Sequence[np.ndarray] | None,
                       step: int, rank: RankChunk, desc: str,
                       show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of every query, `step` queries at a time: ``rank(chunk, k, exclude rows)``.

        Checks the arguments first; no queries, no items or k = 0 give empty results without
        calling `rank`.
        """
        n = len(queries)
        check_search_args(n, k, exclude)
        out_idx, out_sc = empty_results(n, k)
        if n == 0 or len(self) == 0 or k == 0:
            return out_idx, out_sc
        from tqdm.auto import tqdm

        with tqdm(total=n, desc=desc, unit="query", disable=not bars_on(show_progress)) as bar:
            for s in range(0, n, step):
                chunk = queries[s:s + step]
                excl = None if exclude is None else exclude[s:s + len(chunk)]
                out_idx[s:s + len(chunk)], out_sc[s:s + len(chunk)] = rank(chunk, k, excl)
                bar.update(len(chunk))
        return out_idx, out_sc

    @staticmethod
    def _exact_topk(score: ScoreChunk) -> RankChunk:
        """A `rank` for :meth:`_search_chunks` from full score rows: mask excluded items, top-k."""
        def rank(chunk: Any, k: int, exclude: Sequence[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
            block = score(chunk)
            mask_rows(block, exclude)
            return topk(block, k)

        return rank
