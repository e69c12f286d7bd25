"""The item prior as a table: log p(token | empty-history prompt, item prefix) at every edge of
a catalog trie.

PMI-guided search (``generate.prior_weight``) subtracts, at every token a grounded beam may
take, that token's log-probability after the prompt with an *empty* history and the same item
prefix. The number depends on the model and the catalog, not on the user, so it can be read
from a table instead of being run as one more row of every search step (about a third of the
search's rows, counted by :class:`~glossrec.generate.search.SearchWork`).

A trie node spells one prefix and is reached by one edge, so the table is one float32 per node:
``values[node]`` = log p(the edge's token | empty-history prompt, the parent's prefix). It is
filled item by item: an item's tokens (EOS included) teacher-forced after the empty-history
prompt give, in one forward pass, the values of every node on its path. Items that share a
prefix score the shared nodes again (the same numbers); an item whose path is already filled
(a duplicate text, an item removed and added back) costs nothing. The table follows the trie's
``version``: items added later (a live catalog) are scored at the next read.

A table is kept on disk (:meth:`PriorTable.save`, :meth:`PriorTable.load`: each scored item's
tokens and values, with the fingerprint of the model and prompt they were scored with), so a
service restarted, or a run resumed, on the same model scores only the items it has not seen.

Cost: one forward row per catalog token (Beauty: about 220k), against about 100 prior rows per
user searched, so it pays from a few thousand users on; bench/grounded.py (arm
grounded-prior-table) measures both. Values are the search's rows up to fp32 rounding (a batch
teacher-forced at once, not one token per step).
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.generate.constrain import CatalogTrie
from glossrec.io import atomic_write

log = logging.getLogger(__name__)

__all__ = ["PriorTable", "TokenScorer"]

TokenScorer = Callable[[Sequence[Sequence[int]]], list[np.ndarray]]
"""Items' tokens -> per item, log p(each token | empty-history prompt, the tokens before it)."""


class PriorTable:
    """log p(edge token | empty-history prompt, prefix) per trie node (NaN: not scored yet;
    0 at the root, which no edge reaches)."""

    def __init__(self) -> None:
        self.values = np.zeros(0, dtype=np.float32)
        self._scored: dict[int, tuple[int, ...]] = {}
        """Item key -> the tokens whose path the table holds."""
        self._version = -1
        self._trie: weakref.ref[CatalogTrie] | None = None
        """The trie, and its version, the table was last brought up to."""
        self._known: dict[tuple[int, ...], np.ndarray] = {}
        """Item tokens -> their values, read from a saved table: used instead of scoring."""

    def missing(self, trie: CatalogTrie) -> list[tuple[int, tuple[int, ...]]]:
        """(key, tokens) of the trie's items whose path is not (all) in the table. Once the
        table is up to date with a trie, only the items added to it since are looked at."""
        same = self._trie is not None and self._trie() is trie
        if same and trie.version == self._version:
            return []
        if self._trie is not None and not same:  # node ids are one trie's: start again
            self.values, self._scored = np.zeros(0, dtype=np.float32), {}
        self._grow(trie.nodes)
        todo = []
        keys = trie.added_since(self._version) if same else trie.keys()
        for key in keys:
            tokens = trie.tokens(key)
            if self._scored.get(key) == tokens:
                continue
            known = self._known.get(tokens)
            if known is not None:
                self.values[trie.path(tokens)] = known
                self._scored[key] = tokens
            elif np.isnan(self.values[trie.path(tokens)]).any():
                todo.append((key, tokens))
            else:  # every node already scored through other items
                self._scored[key] = tokens
        return todo

    def update(self, trie: CatalogTrie, score: TokenScorer, chunk: int = 256,
               on_chunk: Callable[[int], None] | None = None,
               todo: list[tuple[int, tuple[int, ...]]] | None = None) -> int:
        """Score the items the table lacks (`todo`, from :meth:`missing` of the same trie
        version, or found here), `chunk` at a time (`on_chunk(items done)` after each);
        returns how many were scored."""
        if todo is None:
            todo = self.missing(trie)
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            for (key, tokens), logp in zip(part, score([t for _, t in part])):
                if len(logp) != len(tokens):
                    raise ValueError(f"item {key}: {len(logp)} log-probs for {len(tokens)} tokens")
                self.values[trie.path(tokens)] = logp
                self._scored[key] = tokens
            if on_chunk is not None:
                on_chunk(len(part))
        self._version, self._trie = trie.version, weakref.ref(trie)
        return len(todo)

    def save(self, path: Path, trie: CatalogTrie, meta: Mapping[str, Any]) -> None:
        """Write the scored items of `trie` (tokens and values) and `meta` (what they were
        scored with) to `path`, atomically (.npz)."""
        items = [t for k, t in self._scored.items() if k in trie and trie.tokens(k) == t]
        items = list(dict.fromkeys(items))
        flat = [tok for t in items for tok in t]
        values = (np.concatenate([self.values[trie.path(t)] for t in items]) if items
                  else np.zeros(0, dtype=np.float32))
        with atomic_write(Path(path), "wb") as f:
            np.savez(f, tokens=np.asarray(flat, dtype=np.int64), values=values,
                     lengths=np.asarray([len(t) for t in items], dtype=np.int64),
                     meta=np.asarray(json.dumps(dict(meta), sort_keys=True)))

    def load(self, path: Path, meta: Mapping[str, Any]) -> int:
        """Take the items of a table saved by :meth:`save` with the same `meta` (a table made
        with another model or prompt is ignored, and replaced at the next save); returns how
        many items it holds."""
        path = Path(path)
        if not path.is_file():
            return 0
        try:
            with np.load(path) as z:
                saved_meta = json.loads(str(z["meta"]))
                tokens, values, lengths = z["tokens"], z["values"], z["lengths"]
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: not a readable prior table (%s); it will be made again", path, e)
            return 0
        if saved_meta != json.loads(json.dumps(dict(meta), sort_keys=True)):
            log.info("%s: made with another model or prompt; made again", path)
            return 0
        if len(tokens) != len(values) or int(lengths.sum()) != len(tokens):
            log.warning("%s: inconsistent arrays; it will be made again", path)
            return 0
        ends = np.cumsum(lengths)
        for start, end in zip(ends - lengths, ends):
            self._known[tuple(int(t) for t in tokens[start:end])] = values[start:end]
        return len(lengths)

    def edges(self, nodes: Sequence[int]) -> np.ndarray:
        """The values of `nodes` (float32)."""
        return self.values[np.asarray(nodes, dtype=np.int64)]

    def _grow(self, nodes: int) -> None:
        if len(self.values) < nodes:
            grown = np.full(nodes, np.nan, dtype=np.float32)
            grown[:len(self.values)] = self.values
            grown[0] = 0.0  # the root: no edge leads to it
            self.values = grown
