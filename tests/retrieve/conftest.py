"""Fixtures for the retrieval backends: a small catalog, a download-free fake encoder, real data."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

DATA_ROOT = Path(__file__).parents[2] / ".." / "shared" / "data" / "amazon2014"

TITLES = [
    "Title: Red matte lipstick long lasting",
    "Title: Blue nail polish quick dry",
    "Title: Shampoo for dry damaged hair",
    "Title: Hair conditioner with argan oil",
    "Title: Sunscreen lotion SPF 50 sport",
    "Title: Red matte lipstick long lasting",  # same text as position 0: a guaranteed tie
    "Title: Shampoo shampoo travel size shampoo",
    "Title: Eyeliner pencil black waterproof",
    "Title: Nail polish remover acetone free",
    "Title: Face moisturizer for sensitive skin",
]


@pytest.fixture
def catalog() -> tuple[list[str], list[str]]:
    return [f"item{i}" for i in range(len(TITLES))], list(TITLES)


class FakeEncoder:
    """Hashed bag of words, L2-normalised: deterministic, instant, records what it encoded."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []

    def get_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts: list[str], **kwargs: object) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace(":", " ").split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


@pytest.fixture
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> FakeEncoder:
    """Every DenseRetriever/FaissRetriever in the test loads this instead of a real model."""
    enc = FakeEncoder()
    monkeypatch.setattr("glossrec.retrieve.dense.load_encoder", lambda name, device=None: enc)
    return enc


@pytest.fixture(scope="session")
def beauty_dir() -> Path:
    path = DATA_ROOT / "beauty"
    if not (path / "items.jsonl.gz").is_file():
        pytest.skip(f"real data not found at {path.resolve()}")
    return path
