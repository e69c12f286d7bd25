"""Two cheap ID-based baselines beside SASRec: item popularity and item-kNN.

Both are fit on the split's training sequences only (history + training target per user), so
no validation or test target is counted.

- **Popularity** scores item i by its number of occurrences in the training sequences, the same
  list for every user.
- **Item-kNN** (Sarwar et al., 2001; the sequential-recommendation variant of Ludewig &
  Jannach, 2018): cosine similarity of items over users,
  ``sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| |U_j|)`` with U_i the training users who bought i,
  each item keeping its ``neighbours`` most similar items. A user's score of item j is
  ``sum over history items i of sim(i, j)``; popularity times 1e-6 breaks ties (items with no
  co-occurrence would otherwise tie at 0 and be ranked by catalog order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glossrec.baselines.base import META_FILE
from glossrec.config import ItemKNNConfig
from glossrec.io import atomic_write, read_json, write_json

SIM_FILE = "itemknn.npz"


def item_counts(train_seqs: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """Occurrences of each catalog position in the training sequences."""
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_seqs]) if train_seqs else np.zeros(0, np.int64)
    return np.bincount(flat, minlength=n_items).astype(np.float64)


class Popularity:
    """Most-bought items first, for everyone."""

    kind = "pop"

    def __init__(self, n_items: int, cfg: None = None) -> None:
        self.n_items = n_items
        self.counts = np.zeros(n_items)

    def fit(self, train_seqs: Sequence[Sequence[int]], valid: object = ()) -> None:
        self.counts = item_counts(train_seqs, self.n_items)

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        return np.broadcast_to(self.counts.astype(np.float32), (len(histories), self.n_items)).copy()

    def save(self, folder: Path) -> None:
        write_json(Path(folder) / META_FILE, {"kind": self.kind, "n_items": self.n_items,
                                              "counts": self.counts.astype(int).tolist()})

    @classmethod
    def load(cls, folder: Path) -> Popularity:
        meta = read_json(Path(folder) / META_FILE)
        model = cls(meta["n_items"])
        model.counts = np.asarray(meta["counts"], dtype=np.float64)
        return model


class ItemKNN:
    """Cosine item-item neighbours summed over the history (module docstring)."""

    kind = "itemknn"

    def __init__(self, n_items: int, cfg: ItemKNNConfig | None = None) -> None:
        from scipy import sparse

        self.n_items = n_items
        self.cfg = cfg or ItemKNNConfig()
        self.sim = sparse.csr_matrix((n_items, n_items), dtype=np.float32)
        self.prior = np.zeros(n_items, dtype=np.float32)

    def fit(self, train_seqs: Sequence[Sequence[int]], valid: object = ()) -> None:
        from scipy import sparse

        rows = np.concatenate([np.full(len(s), u) for u, s in enumerate(train_seqs)]) if train_seqs else np.zeros(0)
        cols = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_seqs]) if train_seqs else np.zeros(0)
        x = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                              shape=(len(train_seqs), self.n_items))
        x.data[:] = 1.0  # a repeat purchase counts once per user
        co = (x.T @ x).tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        users_per_item = np.asarray(x.sum(axis=0)).ravel()
        norm = np.sqrt(np.maximum(users_per_item, 1.0))
        co = sparse.diags(1.0 / norm) @ co @ sparse.diags(1.0 / norm)
        self.sim = _keep_top(co.tocsr().astype(np.float32), self.cfg.neighbours)
        counts = item_counts(train_seqs, self.n_items)
        self.prior = (1e-6 * counts / max(counts.max(), 1.0)).astype(np.float32)

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        from scipy import sparse

        rows = np.concatenate([np.full(len(h), r) for r, h in enumerate(histories)]) if histories else np.zeros(0)
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if histories else np.zeros(0)
        h = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                              shape=(len(histories), self.n_items))
        return np.asarray((h @ self.sim).todense(), dtype=np.float32) + self.prior

    def save(self, folder: Path) -> None:
        from scipy import sparse

        folder = Path(folder)
        with atomic_write(folder / SIM_FILE, "wb") as f:
            sparse.save_npz(f, self.sim)
        write_json(folder / META_FILE, {"kind": self.kind, "n_items": self.n_items,
                                        "config": self.cfg.model_dump(),
                                        "prior": self.prior.tolist()})

    @classmethod
    def load(cls, folder: Path) -> ItemKNN:
        from scipy import sparse

        meta = read_json(Path(folder) / META_FILE)
        model = cls(meta["n_items"], ItemKNNConfig(**meta["config"]))
        model.sim = sparse.load_npz(Path(folder) / SIM_FILE).tocsr()
        model.prior = np.asarray(meta["prior"], dtype=np.float32)
        return model


def _keep_top(m: object, n: int) -> object:
    """Each row's n largest entries of a CSR matrix (ties: lower column first)."""
    from scipy import sparse

    m = sparse.csr_matrix(m)
    indptr, indices, data = [0], [], []
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        cols, vals = m.indices[lo:hi], m.data[lo:hi]
        if len(vals) > n:
            keep = np.lexsort((cols, -vals))[:n]
            cols, vals = cols[keep], vals[keep]
        indices.append(cols)
        data.append(vals)
        indptr.append(indptr[-1] + len(cols))
    return sparse.csr_matrix((np.concatenate(data) if data else np.zeros(0, np.float32),
                              np.concatenate(indices) if indices else np.zeros(0, np.int64),
                              np.asarray(indptr)), shape=m.shape)
