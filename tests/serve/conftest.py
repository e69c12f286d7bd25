"""Fixtures for serving tests: a tiny dataset, a fast word-overlap retriever, a fake generator."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from glossrec.io import read_json, write_json
from glossrec.retrieve.base import Retriever, mask_rows, topk

from ..conftest import write_tiny_dataset

TITLES = {
    "A1": "Shea butter hand cream 3 oz",
    "A2": "Argan oil shampoo for dry hair",
    "A3": "Argan oil conditioner for dry hair",
    "A4": "Matte red lipstick long lasting",
    "A5": "Waterproof black mascara volume",
    "A6": "Gel nail polish top coat",
    "A7": "Vitamin C face serum 1 oz",
    "A8": "Mineral sunscreen SPF 50 face lotion",
    "A9": "Bamboo hair brush detangling",
    "B1": "Rose water facial toner spray",
    "B2": "Charcoal face mask peel off",
    "B3": "Tea tree oil acne spot treatment",
}
SEQUENCES = {
    "u1": ["A2", "A3", "A9", "A1"],
    "u2": ["A4", "A5", "A6"],
    "u3": ["A7", "A8", "B1", "B2", "B3"],
}


def write_dataset(folder: Path) -> Path:
    return write_tiny_dataset(folder, TITLES, SEQUENCES)


_TOKEN = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower())) - {"title"}


class WordRetriever(Retriever):
    """Cosine of binary word sets: exact, dependency-free, and easy to reason about in tests."""

    kind = "words"

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._texts: list[str] = []

    @property
    def ids(self) -> list[str]:
        return self._ids

    def index(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        self._ids, self._texts = list(ids), list(texts)

    def search(self, texts: Sequence[str], k: int, exclude: Sequence[np.ndarray] | None = None,
               show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        docs = [_words(t) for t in self._texts]
        scores = np.zeros((len(texts), len(docs)), dtype=np.float32)
        for r, q in enumerate(texts):
            qw = _words(q)
            for c, d in enumerate(docs):
                if qw and d:
                    scores[r, c] = len(qw & d) / math.sqrt(len(qw) * len(d))
        mask_rows(scores, exclude)
        return topk(scores, k)

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        for i, t in zip(ids, texts):
            if i in self._ids:
                self._texts[self._ids.index(i)] = t
            else:
                self._ids.append(i)
                self._texts.append(t)

    def remove(self, ids: Sequence[str]) -> None:
        missing = [i for i in ids if i not in self._ids]
        if missing:
            raise KeyError(missing)
        gone = set(ids)
        keep = [n for n, i in enumerate(self._ids) if i not in gone]
        self._ids = [self._ids[n] for n in keep]
        self._texts = [self._texts[n] for n in keep]

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / "words.json", {"ids": self._ids, "texts": self._texts})

    @classmethod
    def load(cls, folder: Path) -> WordRetriever:
        obj = read_json(Path(folder) / "words.json")
        r = cls()
        r.index(obj["ids"], obj["texts"])
        return r


class FakeGenerator:
    """Returns, for each prompt, fixed texts; records every call's batch size."""

    def __init__(self, texts: list[str] | None = None, delay_s: float = 0.0) -> None:
        self.texts = texts
        self.delay_s = delay_s
        self.calls: list[int] = []
        self.prompts: list[str] = []

    def generate(self, prompts: list[str]) -> list[list[str]]:
        self.calls.append(len(prompts))
        self.prompts.extend(prompts)
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for p in prompts:
            if self.texts is not None:
                out.append(list(self.texts))
            else:
                # Echo the last history line: a model that predicts "the same again".
                hist = p.split("### Purchase history:\n", 1)[1].split("\n\n### Next item:", 1)[0]
                out.append([hist.splitlines()[-1], "Title: nothing matches zzz"])
        return out


@pytest.fixture()
def dataset_dir(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture()
def word_catalog(tmp_path: Path):
    from glossrec.data import load_dataset
    from glossrec.retrieve.live import LiveCatalog

    ds = load_dataset(write_dataset(tmp_path / "data"))
    return LiveCatalog.from_catalog(tmp_path / "index", ds.catalog, WordRetriever(),
                                    loader=WordRetriever.load)


# ---- a real service in a subprocess ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(run_dir: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 60.0) -> Server:
    """`glossrec serve` on a free loopback port; returns once /health answers."""
    port = free_port()
    log = run_dir.parent / f"server-{port}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-c", "from glossrec.cli import main; main()", "serve",
           "--run", str(run_dir), "--port", str(port), "--log-level", "warning", *args]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not come up in {timeout} s:\n{server.output()}")


def stop_server(server: Server, kill: bool = False) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@contextmanager
def running(run_dir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    server = start_server(run_dir, *args, env=env)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture()
def bm25_run(tmp_path: Path) -> Path:
    """A servable LIS run (BM25) over the tiny dataset, made like `glossrec index` makes it."""
    from glossrec.serve import make_index_run

    return make_index_run(write_dataset(tmp_path / "data"), "bm25", tmp_path / "run")


# ---- a scored run (the report view) ----------------------------------------------------------


def scored_run(run: Path) -> None:
    """A run scored like `glossrec run` scores one: metrics.json + rankings.jsonl for the run and
    its LIS baseline, report.md and report.png."""
    from glossrec.config import EvalConfig, RunConfig
    from glossrec.evaluate import evaluate, write_run
    from glossrec.pipeline import write_report
    from glossrec.rundir import RunDir

    rng = np.random.default_rng(0)
    n, items = 60, [f"I{i}" for i in range(30)]
    targets = rng.integers(0, 30, n)
    lengths = rng.integers(3, 20, n)
    results = {}
    for name, folder in (("GLoSS-bm25", run), ("LIS-bm25", RunDir(run).lis("bm25").path)):
        ranked = np.stack([rng.permutation(30)[:10] for _ in range(n)])
        ev = evaluate([f"u{u}" for u in range(n)], targets, ranked, -np.sort(-rng.random((n, 10))), lengths,
                      EvalConfig(), "beauty")
        write_run(folder, ev, items, RunConfig().updated(retrieve={"retriever": "bm25"}))
        results[name] = ev
    (run / "generations.jsonl").write_text("")
    write_report(run, results)


@contextmanager
def serving_app(app, timeout: float = 30.0) -> Iterator[str]:
    """An app object (e.g. with a test double for the model) served by uvicorn in a thread on a
    free loopback port; yields its base URL."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture()
def lm_run(tmp_path: Path, tiny_model_config) -> Path:
    """An LM-mode run over the tiny dataset: the tiny random LM, 3 beams, BM25."""
    from glossrec.config import load_config
    from glossrec.rundir import RunDir

    cfg = load_config(None, {
        "data": {"path": str(write_dataset(tmp_path / "data"))},
        "model": tiny_model_config.model_dump(mode="json", exclude_none=True),
        "generate": {"num_beams": 3, "num_return": 3, "max_new_tokens": 6, "batch_size": 4},
        "retrieve": {"retriever": "bm25"},
    })
    return RunDir(tmp_path / "run").write_config(cfg).parent


# ---- LM-mode batching ------------------------------------------------------------------------


@pytest.fixture()
def searches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records every grounded search call (glossrec's loop) as (prompts, exclusion lists)."""
    from glossrec.generate import hf

    calls: list[tuple[int, int]] = []
    real = hf.grounded_beam_search

    def spy(gen, batch, exclusions, *args, **kw):
        calls.append((len(batch), len(exclusions) if exclusions is not None else 0))
        found = real(gen, batch, exclusions, *args, **kw)
        assert found is not None, "the tiny LM's cache is reusable: glossrec's loop must run"
        return found

    monkeypatch.setattr(hf, "grounded_beam_search", spy)
    return calls


async def post_together(app, histories: list[list[str]], k: int = 3) -> tuple[list[httpx.Response], dict]:
    """POST /recommend for every history at once, in-process; the responses and /health after."""
    import asyncio

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
        await app.state.batcher.start()
        try:
            rs = await asyncio.gather(*(c.post("/recommend", json={"history": h, "k": k})
                                        for h in histories))
            return list(rs), (await c.get("/health")).json()
        finally:
            await app.state.batcher.close()
