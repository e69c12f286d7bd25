"""Item ids and texts in position order: the bookkeeping every backend shares.

A backend's search returns positions; :class:`ItemTable` maps them to ids and back, and keeps
them consistent through ``upsert`` and ``remove`` (whose keep-mask a backend applies to its own
per-item arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ItemTable", "check_items"]


@dataclass
class ItemTable:
    """Item ids and texts in position order: the bookkeeping every backend shares.

    Positions are what ``search`` returns. ``upsert`` keeps a replaced item's position and
    appends new ones; ``remove`` closes the gaps (later items move up), like ``np.delete``.
    """

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    pos: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.reset(self.ids, self.texts)

    def __len__(self) -> int:
        return len(self.ids)

    def reset(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        ids, texts = check_items(ids, texts)
        pos = {iid: p for p, iid in enumerate(ids)}
        if len(pos) != len(ids):
            dups = sorted({iid for p, iid in enumerate(ids) if pos[iid] != p})
            raise ValueError(f"duplicate item ids: {_names(dups)}")
        self.ids, self.texts, self.pos = ids, texts, pos

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """Positions of these ids; unknown ids raise KeyError naming them all."""
        missing = [i for i in ids if i not in self.pos]
        if missing:
            raise KeyError(f"unknown item ids: {_names(missing)}")
        return np.fromiter((self.pos[i] for i in ids), dtype=np.int64, count=len(ids))

    def upsert(self, ids: Sequence[str], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Write items; returns (which inputs were kept, their positions).

        An id repeated within one call keeps its last text. Positions >= the old length are new
        items, appended in input order.
        """
        ids, texts = check_items(ids, texts)
        keep = self.last_occurrences(ids)
        out = np.empty(len(keep), dtype=np.int64)
        for n, j in enumerate(keep.tolist()):
            iid = ids[j]
            p = self.pos.get(iid)
            if p is None:
                p = len(self.ids)
                self.pos[iid] = p
                self.ids.append(iid)
                self.texts.append(texts[j])
            else:
                self.texts[p] = texts[j]
            out[n] = p
        return keep, out

    @staticmethod
    def last_occurrences(ids: Sequence[str]) -> np.ndarray:
        """Indices of each id's last occurrence, ascending (what ``upsert`` keeps)."""
        last = {iid: j for j, iid in enumerate(ids)}
        return np.fromiter(sorted(last.values()), dtype=np.int64, count=len(last))

    def remove(self, ids: Sequence[str]) -> np.ndarray:
        """Delete items; returns the keep-mask over the old positions (for array rows)."""
        drop = self.positions(list(ids))
        keep = np.ones(len(self.ids), dtype=bool)
        keep[drop] = False
        self.reset([i for i, k in zip(self.ids, keep.tolist()) if k],
                   [t for t, k in zip(self.texts, keep.tolist()) if k])
        return keep


def check_items(ids: Sequence[str], texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """(ids, texts) as lists, checked to pair up and be strings."""
    ids, texts = list(ids), list(texts)
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
    bad = [i for i in ids if not isinstance(i, str)]
    if bad:
        raise TypeError(f"item ids must be strings, got {bad[:3]!r}")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("item texts must be strings")
    return ids, texts


def _names(ids: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")
