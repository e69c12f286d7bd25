"""Texts per user -> searched hits -> one ranked list per user: the one ranking path.

:func:`rank_texts` is what evaluation (``glossrec.pipeline``: GLoSS rows and Last-Item Search)
and serving (``glossrec.serve.Recommender``) both call. It flattens every user's texts, searches
them in one call with each user's exclusions repeated for each of its texts, and fuses each
user's rows of hits (:func:`fuse`). Its result also says which texts found an item
(:meth:`RankedUsers.found_by`), which the service reports per recommended item.

Fusion (``glossrec.config.Ranking``) is a pure function of the search results. Rows of
``hit_idx``/``hit_scores`` are the user's texts in beam order, columns their hits best first;
-1 marks "no hit" (padding).

- ``paper``: the GLoSS rule. Each text contributes its top-1 item; items are ordered by that
  retrieval score (descending); an item hit by several texts counts once with its highest
  score, so a user may end with fewer items than texts.
- ``max``: the top ``k`` hits of every text, fused by each item's maximum score.
- ``rrf``: reciprocal-rank fusion, score(item) = sum over texts of 1 / (rrf_k + rank), rank
  1-based within the text's hits (Cormack et al., 2009). Robust when score scales differ.

Ties in the fused score go to the item seen first (earlier text, then better rank).

Last-Item Search is a case of the same path (:data:`LIS`): one text per user, the last history
item's text, fused by ``max``. A retriever's row is sorted by score, ties by catalog position
(:func:`glossrec.retrieve.base.topk`), and max fusion of a single row keeps its scores and
breaks ties by rank within the row, so the result is exactly that text's top k in the
retriever's order, ties included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

from glossrec.config import Ranking

if TYPE_CHECKING:
    from glossrec.retrieve.base import Retriever

LIS: Ranking = "max"
"""The fusion of Last-Item Search (one text per user): its text's own top k, in order."""

SearchFn = Callable[[list[str], int, Union[list[np.ndarray], None]], tuple[np.ndarray, np.ndarray]]
"""(texts, hits per text, exclusions per text or None) -> (positions [n, w], scores [n, w])."""


def fuse(hit_idx: np.ndarray, hit_scores: np.ndarray, method: Ranking = "paper", k: int = 5,
         rrf_k: int = 60, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(items [<= k] int64, scores [<= k] float) for one user; see the module docstring.

    weights: one per row, ``rrf`` only: row t adds weights[t] / (rrf_k + rank) (weighted
    reciprocal-rank fusion, how a hybrid mixes ranked lists of different sources)."""
    if weights is not None and method != "rrf":
        raise ValueError(f"row weights need rrf fusion, not {method!r}")
    hit_idx = np.asarray(hit_idx)
    hit_scores = np.asarray(hit_scores, dtype=np.float64)
    if hit_idx.ndim == 1:
        hit_idx, hit_scores = hit_idx[:, None], hit_scores[:, None]
    if method == "paper":
        hit_idx, hit_scores = hit_idx[:, :1], hit_scores[:, :1]
    n_texts, width = hit_idx.shape
    best: dict[int, float] = {}
    first_seen: dict[int, int] = {}
    order = 0
    for t in range(n_texts):
        for r in range(width):
            item = int(hit_idx[t, r])
            if item < 0:
                continue
            if method == "rrf":
                s = (1.0 if weights is None else float(weights[t])) / (rrf_k + r + 1)
            else:
                s = float(hit_scores[t, r])
            if item not in best:
                best[item] = s
                first_seen[item] = order
                order += 1
            elif method == "rrf":
                best[item] += s
            elif s > best[item]:
                best[item] = s
    ranked = sorted(best, key=lambda i: (-best[i], first_seen[i]))[:k]
    return (np.asarray(ranked, dtype=np.int64),
            np.asarray([best[i] for i in ranked], dtype=np.float64))


def fuse_users(hit_idx: np.ndarray, hit_scores: np.ndarray, offsets: np.ndarray,
               method: Ranking = "paper", k: int | Sequence[int] = 5, rrf_k: int = 60,
               weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fuse many users at once: user u owns rows offsets[u]:offsets[u+1] of the hit arrays
    (and of `weights`, one per row, for weighted rrf).

    `k` is one cutoff for all users or one per user. Returns padded arrays (items
    [n_users, max k] with -1, scores [n_users, max k] with -inf).
    """
    n_users = len(offsets) - 1
    ks = [k] * n_users if isinstance(k, (int, np.integer)) else list(k)
    if len(ks) != n_users:
        raise ValueError(f"{len(ks)} cutoffs for {n_users} users")
    width = max(ks, default=int(k) if isinstance(k, (int, np.integer)) else 0)
    items = np.full((n_users, width), -1, dtype=np.int64)
    scores = np.full((n_users, width), -np.inf, dtype=np.float64)
    for u in range(n_users):
        a, b = offsets[u], offsets[u + 1]
        it, sc = fuse(hit_idx[a:b], hit_scores[a:b], method, ks[u], rrf_k,
                      None if weights is None else weights[a:b])
        items[u, : len(it)] = it
        scores[u, : len(sc)] = sc
    return items, scores


def hits_per_text(method: Ranking, k: int, per_text_k: int,
                  texts_per_user: Sequence[Sequence[str]] = ()) -> int:
    """How many hits each text is searched for: 1 for ``paper`` (top-1 per text); else
    max(per_text_k, k), or k when no user has more than one text (a lone text's hits below
    its k-th can never reach its fused top k, under ``max`` or ``rrf``)."""
    if method == "paper":
        return 1
    if texts_per_user and all(len(t) <= 1 for t in texts_per_user):
        return k
    return max(per_text_k, k)


@dataclass(frozen=True)
class RankedUsers:
    """Every user's fused ranking, and the per-text hits it was fused from."""

    items: np.ndarray
    """[n_users, max k] int64 positions of the searched index, best first; -1 pads."""
    scores: np.ndarray
    """[n_users, max k] float64 fused scores; -inf pads."""
    hit_idx: np.ndarray
    """[n_texts, width] each text's hits (positions), texts of all users in order."""
    hit_scores: np.ndarray
    offsets: np.ndarray
    """User u's texts are rows offsets[u]:offsets[u+1] of the hit arrays."""
    method: Ranking

    def user(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """User u's (items, scores) without padding."""
        keep = self.items[u] >= 0
        return self.items[u][keep], self.scores[u][keep]

    def found_by(self, u: int, item: int) -> list[int]:
        """Which of user u's texts (0-based, in order) found `item` among the hits that were
        fused: the top-1 hit under ``paper``, every searched hit otherwise."""
        a, b = int(self.offsets[u]), int(self.offsets[u + 1])
        rows = self.hit_idx[a:b, :1] if self.method == "paper" else self.hit_idx[a:b]
        return np.nonzero((rows == item).any(axis=1))[0].tolist()


def rank_texts(search: Retriever | SearchFn, texts_per_user: Sequence[Sequence[str]],
               k: int | Sequence[int], method: Ranking, *,
               exclude: Sequence[np.ndarray | Sequence[int] | None] | None = None,
               per_text_k: int = 20, rrf_k: int = 60, show_progress: bool = False) -> RankedUsers:
    """Search every text of every user and fuse each user's hits into one ranked list.

    search: a retriever (its ``search``), or a function with :data:`SearchFn`'s signature (a
        caller with precomputed query embeddings: dense LIS reuses the items' own).
    k: one cutoff for all users, or one per user (a service's requests each have their own).
    exclude: per user, index positions never ranked for it (its history), or None.
    Last-Item Search is ``rank_texts(retriever, [[last_text] ...], k, LIS)``.
    """
    n_users = len(texts_per_user)
    ks = [int(k)] * n_users if isinstance(k, (int, np.integer)) else [int(x) for x in k]
    if len(ks) != n_users:
        raise ValueError(f"{len(ks)} cutoffs for {n_users} users")
    if exclude is not None and len(exclude) != n_users:
        raise ValueError(f"{len(exclude)} exclusion lists for {n_users} users")
    width = hits_per_text(method, max(ks, default=1), per_text_k, texts_per_user)
    if hasattr(search, "search"):
        retriever = search
        width = max(1, min(width, len(retriever)))  # type: ignore[arg-type]

        def run(texts: list[str], w: int, excl: list[np.ndarray] | None
                ) -> tuple[np.ndarray, np.ndarray]:
            return retriever.search(texts, w, excl, show_progress=show_progress)  # type: ignore[union-attr]
    else:
        run = search  # type: ignore[assignment]
    flat: list[str] = []
    offsets = [0]
    per_text: list[np.ndarray] | None = [] if exclude is not None else None
    no_exclusion = np.zeros(0, dtype=np.int64)
    for u, texts in enumerate(texts_per_user):
        flat.extend(texts)
        offsets.append(len(flat))
        if per_text is not None and exclude is not None:
            e = exclude[u]
            h = no_exclusion if e is None else np.asarray(e, dtype=np.int64)
            per_text.extend([h] * len(texts))
    if flat:
        idx, sc = run(flat, width, per_text)
    else:
        idx = np.zeros((0, width), dtype=np.int64)
        sc = np.zeros((0, width), dtype=np.float32)
    if len(idx) != len(flat):
        raise RuntimeError(f"search returned {len(idx)} rows for {len(flat)} texts")
    off = np.asarray(offsets)
    items, scores = fuse_users(idx, sc, off, method, k if isinstance(k, (int, np.integer)) else ks,
                               rrf_k)
    return RankedUsers(items, scores, np.asarray(idx), np.asarray(sc), off, method)
