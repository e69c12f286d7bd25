"""Micro-batching: concurrent requests share one model call.

Beam search on a batch of prompts costs far less than the same prompts one by one (the weights
are read once per step for the whole batch). The batcher waits a short window after the first
request for others to arrive, then hands up to ``max_batch`` of them to a worker thread in one
call. Only one batch runs at a time (one model), so requests that arrive while it runs form the
next batch without any waiting. ``max_batch=1`` turns batching off (one request per call).

The window can follow the model's cost (``window_fraction``): it is then that fraction of a
recent batch's time when that is longer than ``window_s``, up to ``max_window_s``. Requests sent
together do not arrive together: between a batch's responses and its clients' next requests lie
sending, reading and parsing, slow on a busy machine. A window shorter than that splits them,
and under steady load the split repeats (a batch of 1, then of the other 7, then of 1 again):
whoever was split off is queued alone when the batch it missed ends, and starts the next batch
before the others are back. A wait of a fixed fraction of a batch's cost bounds what a lone
request pays for it, and is long enough to gather the others when a batch takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

_RECENT_WEIGHT = 0.3
"""Weight of the newest batch in BatchStats.recent_s (an exponential moving average)."""


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    max_size: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    busy_s: float = 0.0
    recent_s: float = 0.0
    """The time of a batch lately: a moving average that follows the newest batches."""

    def record(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.requests += size
        self.max_size = max(self.max_size, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1
        self.busy_s += seconds
        self.recent_s = (seconds if self.batches == 1
                         else (1 - _RECENT_WEIGHT) * self.recent_s + _RECENT_WEIGHT * seconds)

    def to_json(self) -> dict[str, object]:
        return {"batches": self.batches, "requests": self.requests, "max_size": self.max_size,
                "mean_size": round(self.requests / self.batches, 3) if self.batches else 0.0,
                "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "busy_s": round(self.busy_s, 3), "recent_s": round(self.recent_s, 3)}


class MicroBatcher(Generic[T, R]):
    """Collects submissions into batches for ``fn(items) -> results`` (same length and order).

    ``fn`` runs in a dedicated worker thread so the event loop keeps accepting requests. A result
    that is an Exception is raised to its own submitter only; if ``fn`` itself raises, every
    request of that batch gets the error.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R | BaseException]], window_s: float = 0.015,
                 max_batch: int = 8, window_fraction: float = 0.0, max_window_s: float = 0.5) -> None:
        """window_s: the wait after a batch's first request; with window_fraction > 0, the
        wait is that fraction of a recent batch's time when longer, capped at max_window_s."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if window_s < 0:
            raise ValueError("window_s must be >= 0")
        if window_fraction < 0:
            raise ValueError("window_fraction must be >= 0")
        if window_fraction > 0 and max_window_s < window_s:
            raise ValueError("max_window_s must be >= window_s")
        self.fn = fn
        self.window_s = window_s
        self.max_batch = max_batch
        self.window_fraction = window_fraction
        self.max_window_s = max_window_s
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glossrec-batch")
        self._task = asyncio.create_task(self._run(), name="glossrec-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(self, item: T) -> R:
        if self._task is None:
            await self.start()
        assert self._queue is not None
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    def current_window_s(self) -> float:
        """How long the next batch waits for more requests after its first."""
        if not self.window_fraction:
            return self.window_s
        return min(self.max_window_s, max(self.window_s, self.window_fraction * self.stats.recent_s))

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.current_window_s()
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not live:
                continue
            assert self._queue is not None
            log.debug("batch of %d request(s) (window %.0f ms, %d queued behind it)", len(live),
                      1000 * self.current_window_s(), self._queue.qsize())
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [i for i, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)}")
            except Exception as e:  # one failure of the model fails the whole batch
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            finally:
                self.stats.record(len(live), time.perf_counter() - t0)
            for (_, fut), res in zip(live, results):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
