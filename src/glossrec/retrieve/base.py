"""The retriever interface and the exact, deterministic top-k every backend shares.

Ties in score are broken by the lower catalog position (the order of the items file, or of
insertion for added items), so a run is reproducible: BM25 scores are exact sums, identical
across machines and batch sizes; dense scores are float32 matrix products whose last bits may
vary with the batch shape. Backends compute full score rows in chunks and call :func:`topk`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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
    def save(self, folder: Path) -> None:
        """Persist atomically: a crash mid-save leaves the previous index loadable."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> Retriever: ...

    def __len__(self) -> int:
        return len(self.ids)
