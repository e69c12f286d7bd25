"""Micro-batching: concurrent requests share one model call.

Beam search on a batch of prompts costs far less than the same prompts one by one (the weights
are read once per step for the whole batch). The batcher waits a short window after the first
request for others to arrive, then hands up to ``max_batch`` of them to a worker thread in one
call. Only one batch runs at a time (one model), so requests that arrive while it runs form the
next batch without any waiting. ``max_batch=1`` turns batching off (one request per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    max_size: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    busy_s: float = 0.0

    def record(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.requests += size
        self.max_size = max(self.max_size, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1
        self.busy_s += seconds

    def to_json(self) -> dict[str, object]:
        return {"batches": self.batches, "requests": self.requests, "max_size": self.max_size,
                "mean_size": round(self.requests / self.batches, 3) if self.batches else 0.0,
                "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "busy_s": round(self.busy_s, 3)}


class MicroBatcher(Generic[T, R]):
    """Collects submissions into batches for ``fn(items) -> results`` (same length and order).

    ``fn`` runs in a dedicated worker thread so the event loop keeps accepting requests. A result
    that is an Exception is raised to its own submitter only; if ``fn`` itself raises, every
    request of that batch gets the error.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R | BaseException]], window_s: float = 0.015,
                 max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if window_s < 0:
            raise ValueError("window_s must be >= 0")
        self.fn = fn
        self.window_s = window_s
        self.max_batch = max_batch
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

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
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
