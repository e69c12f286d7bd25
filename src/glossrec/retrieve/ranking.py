"""Turn one user's per-text search hits into one ranked list.

Pure functions of the search results, so every stage (evaluation, serving) ranks the same way.
Rows of ``hit_idx``/``hit_scores`` are the user's generated texts in beam order, columns their
hits best first; -1 marks "no hit" (padding).

- ``paper``: the GLoSS rule. Each text contributes its top-1 item; items are ordered by that
  retrieval score (descending); an item hit by several texts counts once with its highest
  score, so a user may end with fewer items than texts.
- ``max``: the top ``k`` hits of every text, fused by each item's maximum score.
- ``rrf``: reciprocal-rank fusion, score(item) = sum over texts of 1 / (rrf_k + rank), rank
  1-based within the text's hits (Cormack et al., 2009). Robust when score scales differ.

Ties in the fused score go to the item seen first (earlier text, then better rank).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Method = Literal["paper", "max", "rrf"]


def fuse(hit_idx: np.ndarray, hit_scores: np.ndarray, method: Method = "paper", k: int = 5,
         rrf_k: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(items [<= k] int64, scores [<= k] float) for one user; see the module docstring."""
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
            s = 1.0 / (rrf_k + r + 1) if method == "rrf" else float(hit_scores[t, r])
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
               method: Method = "paper", k: int = 5, rrf_k: int = 60
               ) -> tuple[np.ndarray, np.ndarray]:
    """Fuse many users at once: user u owns rows offsets[u]:offsets[u+1] of the hit arrays.

    Returns padded arrays (items [n_users, k] with -1, scores [n_users, k] with -inf).
    """
    n_users = len(offsets) - 1
    items = np.full((n_users, k), -1, dtype=np.int64)
    scores = np.full((n_users, k), -np.inf, dtype=np.float64)
    for u in range(n_users):
        a, b = offsets[u], offsets[u + 1]
        it, sc = fuse(hit_idx[a:b], hit_scores[a:b], method, k, rrf_k)
        items[u, : len(it)] = it
        scores[u, : len(sc)] = sc
    return items, scores
