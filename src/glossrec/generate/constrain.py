"""Catalog-grounded beam search: a token trie of the catalog's item texts.

With ``generate.constrain = "catalog"`` beam search may only write token sequences that spell a
catalog item followed by EOS, so every generated text is exactly one item's text (retrieval
then finds it exactly) and, with history exclusion, never an item the user already has.

An item's tokens are ``tokenizer(text, add_special_tokens=False)`` + EOS: exactly what training
puts after the prompt (prompts end in "\\n", so no merge crosses the boundary).

Items are keyed by an int chosen by the caller (a catalog position in the pipeline, a stable key
in the live service), so they can be added, removed and excluded one by one. Every node counts
the items below it; a user's excluded items are subtracted along their paths (a per-call
node -> count dict), and a token is allowed only while items remain below it. Removed items
leave their zero-count nodes behind (they are reused when the text comes back): plain dicts and
lists of ints, ~60-90 MB for 12k items, built in about a second.

This module imports no torch: a prefix function receives anything with ``.tolist()``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["CatalogTrie", "PrefixFn"]

PrefixFn = Callable[[int, Any], list[int]]
Exclusion = Mapping[int, int]
"""node -> how many excluded items lie below it (for one prompt)."""

_NONE: dict[int, int] = {}


class CatalogTrie:
    """Token trie of item texts keyed by int, with counts for exclusion; not thread-safe for
    writes (the service syncs it under its own lock)."""

    def __init__(self, tokenizer: Any, eos_id: int | None = None) -> None:
        eos = tokenizer.eos_token_id if eos_id is None else eos_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token: an item could not end")
        self.tokenizer = tokenizer
        self.eos_id: int = int(eos)
        self._children: list[dict[int, int]] = [{}]
        self._count: list[int] = [0]
        self._ends: dict[int, dict[int, None]] = {}
        """Node reached by an item's EOS -> its keys (insertion ordered: duplicates share it)."""
        self._tokens: dict[int, tuple[int, ...]] = {}
        self._texts: dict[int, str] = {}
        self._lengths: Counter[int] = Counter()
        self.version = 0
        """Bumped by every write: readers that derive data from the items (a prior table)
        see at a glance whether they are behind."""
        self._inserted: list[int] = []
        self._inserted_at: list[int] = []
        """Keys in the order they were inserted (again when replaced), and the version each
        insert made: :meth:`added_since`. Compacted as it grows (:meth:`_compact_log`), so a
        live catalog that replaces the same items again and again keeps it short."""

    @classmethod
    def from_texts(cls, tokenizer: Any, texts: Sequence[str],
                   eos_id: int | None = None) -> CatalogTrie:
        """A trie of `texts` keyed by their position (a Catalog's texts() order)."""
        trie = cls(tokenizer, eos_id)
        trie.add_many(enumerate(texts))
        return trie

    # ---- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, key: object) -> bool:
        return key in self._texts

    def keys(self) -> list[int]:
        return list(self._texts)

    def text(self, key: int) -> str:
        return self._texts[key]

    def tokens(self, key: int) -> tuple[int, ...]:
        """The item's tokens, EOS included."""
        return self._tokens[key]

    def items(self) -> list[tuple[int, tuple[int, ...]]]:
        """(key, tokens with EOS) of every item."""
        return list(self._tokens.items())

    def added_since(self, version: int) -> list[int]:
        """Keys inserted (or replaced) after `version` that the trie still holds, in the order
        of their latest insert: what a reader that was up to date at `version` has not seen."""
        start = bisect.bisect_right(self._inserted_at, version)
        latest = dict.fromkeys(reversed(self._inserted[start:]))  # each key at its last insert
        return [k for k in reversed(latest) if k in self._tokens]

    @property
    def max_tokens(self) -> int:
        """Tokens (EOS included) of the longest item: the new tokens a search needs at least."""
        return max(self._lengths, default=1)

    @property
    def nodes(self) -> int:
        return len(self._children)

    # ---- writing ------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Item token sequences, EOS appended (one batched tokenizer call)."""
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [tuple(int(t) for t in row) + (self.eos_id,) for row in ids]

    def add(self, key: int, text: str) -> None:
        """Add (or replace) one item."""
        self.add_many([(key, text)])

    def add_many(self, items: Iterable[tuple[int, str]]) -> None:
        pairs = list(items)
        for (key, text), tokens in zip(pairs, self.encode([t for _, t in pairs])):
            if key in self._texts:
                self.remove(key)
            self._insert(int(key), text, tokens)

    def _insert(self, key: int, text: str, tokens: tuple[int, ...]) -> None:
        self.version += 1
        node = 0
        self._count[0] += 1
        for tok in tokens:
            child = self._children[node].get(tok)
            if child is None:
                child = len(self._children)
                self._children.append({})
                self._count.append(0)
                self._children[node][tok] = child
            self._count[child] += 1
            node = child
        self._ends.setdefault(node, {})[key] = None
        self._tokens[key] = tokens
        self._texts[key] = text
        self._lengths[len(tokens)] += 1
        self._inserted.append(key)
        self._inserted_at.append(self.version)
        if len(self._inserted) > 2 * len(self._tokens) + 64:
            self._compact_log()

    def _compact_log(self) -> None:
        """Keep each held key's latest insert only. :meth:`added_since` answers the same for
        every version: an earlier insert of a key inserted again is covered by the later one,
        and a key no longer held is never reported."""
        latest = dict(zip(self._inserted, self._inserted_at))
        kept = sorted((v, k) for k, v in latest.items() if k in self._tokens)
        self._inserted = [k for _, k in kept]
        self._inserted_at = [v for v, _ in kept]

    def remove(self, key: int) -> None:
        """Remove one item (KeyError when absent)."""
        tokens = self._tokens.pop(key)
        del self._texts[key]
        self.version += 1
        node = 0
        self._count[0] -= 1
        for tok in tokens:
            node = self._children[node][tok]
            self._count[node] -= 1
        del self._ends[node][key]
        self._lengths[len(tokens)] -= 1
        if not self._lengths[len(tokens)]:
            del self._lengths[len(tokens)]

    # ---- searching ----------------------------------------------------------------------------

    def exclusion(self, keys: Iterable[int]) -> dict[int, int]:
        """node -> excluded items below it, for the items among `keys` that the trie holds
        (a key listed twice counts once)."""
        out: dict[int, int] = {}
        for key in set(keys):
            tokens = self._tokens.get(key)
            if tokens is None:
                continue
            node = 0
            out[0] = out.get(0, 0) + 1
            for tok in tokens:
                node = self._children[node][tok]
                out[node] = out.get(node, 0) + 1
        return out

    def _live(self, node: int, excl: Exclusion) -> bool:
        return self._count[node] - excl.get(node, 0) > 0

    def walk(self, tokens: Iterable[int], excl: Exclusion = _NONE) -> int | None:
        """The node a token prefix leads to, or None when it leaves the (non-excluded) trie."""
        node = 0
        if not self._live(0, excl):
            return None
        for tok in tokens:
            child = self._children[node].get(int(tok))
            if child is None or not self._live(child, excl):
                return None
            node = child
        return node

    def branches(self, node: int) -> list[int]:
        """Every token leaving `node`, live or not (a node id always spells the same prefix)."""
        return list(self._children[node])

    def child(self, node: int, token: int) -> int:
        """The node `token` leads to from `node` (KeyError when it is no branch)."""
        return self._children[node][token]

    def path(self, tokens: Sequence[int]) -> list[int]:
        """The nodes an item's tokens lead to, one per token (KeyError when they leave the
        trie)."""
        node, out = 0, []
        for tok in tokens:
            node = self._children[node][tok]
            out.append(node)
        return out

    def allowed(self, node: int, excl: Exclusion = _NONE) -> list[int]:
        """Tokens that keep at least one non-excluded item below (never empty for a live node)."""
        return [tok for tok, child in self._children[node].items() if self._live(child, excl)]

    def prefix_fn(self, width: int, exclusions: Sequence[Exclusion] | None = None) -> PrefixFn:
        """A `prefix_allowed_tokens_fn` for transformers' generate.

        `width` is the (left-padded) prompt width: row tokens after it are the generated ones.
        `exclusions[batch_id]` is the exclusion of prompt row `batch_id` (transformers passes the
        prompt's row in the batch, shared by its beams). A prefix outside the trie (a dead beam
        that beam search filled with a -inf token) or past an item's EOS gets [EOS]: never an
        empty list, which transformers refuses.
        """
        eos = [self.eos_id]

        def fn(batch_id: int, input_ids: Any) -> list[int]:
            excl = exclusions[batch_id] if exclusions is not None else _NONE
            node = self.walk(input_ids[width:].tolist(), excl)
            if node is None:
                return eos
            return self.allowed(node, excl) or eos

        return fn

    def resolve(self, tokens: Sequence[int], excluded: Collection[int] = ()) -> int | None:
        """The key of the item a generated token row spells (tokens up to its first EOS; what
        follows is padding), or None when it is no complete item. Among duplicates the first
        key not in `excluded` is taken."""
        try:
            end = list(tokens).index(self.eos_id) + 1
        except ValueError:
            return None
        node = self.walk(tokens[:end])
        if node is None:
            return None
        for key in self._ends.get(node, ()):
            if key not in excluded:
                return key
        return None
