from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from glossrec.serve.batching import MicroBatcher


def test_concurrent_submissions_share_one_call() -> None:
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(items)
        return [i * 10 for i in items]

    async def main() -> list[int]:
        b = MicroBatcher(fn, window_s=0.05, max_batch=16)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(i) for i in range(5)))
        finally:
            await b.close()

    assert asyncio.run(main()) == [0, 10, 20, 30, 40]
    assert calls == [[0, 1, 2, 3, 4]]


def test_max_batch_and_queue_while_busy() -> None:
    sizes: list[int] = []

    def fn(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.05)  # requests arriving meanwhile form the next batch
        return items

    async def main() -> None:
        b = MicroBatcher(fn, window_s=0.0, max_batch=3)
        out = await asyncio.gather(*(b.submit(i) for i in range(7)))
        assert out == list(range(7))
        assert b.stats.requests == 7 and b.stats.max_size == 3
        await b.close()

    asyncio.run(main())
    assert sum(sizes) == 7 and max(sizes) == 3 and len(sizes) == 3


def test_max_batch_one_is_one_at_a_time() -> None:
    sizes: list[int] = []

    def fn(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    async def main() -> None:
        b = MicroBatcher(fn, window_s=0.05, max_batch=1)
        await asyncio.gather(*(b.submit(i) for i in range(4)))
        await b.close()

    asyncio.run(main())
    assert sizes == [1, 1, 1, 1]


def test_errors_go_to_their_own_submitter_or_to_the_whole_batch() -> None:
    def per_item(items: list[int]) -> list[object]:
        return [ValueError(f"bad {i}") if i < 0 else i for i in items]

    def broken(items: list[int]) -> list[int]:
        raise RuntimeError("model crashed")

    async def main() -> None:
        b = MicroBatcher(per_item, window_s=0.02, max_batch=8)
        res = await asyncio.gather(b.submit(1), b.submit(-1), b.submit(2), return_exceptions=True)
        assert res[0] == 1 and res[2] == 2 and isinstance(res[1], ValueError)
        await b.close()
        b2 = MicroBatcher(broken, window_s=0.02, max_batch=8)
        res = await asyncio.gather(b2.submit(1), b2.submit(2), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in res)
        # ...and the batcher keeps serving afterwards.
        b2.fn = lambda items: items
        assert await b2.submit(3) == 3
        await b2.close()

    asyncio.run(main())


def test_work_runs_off_the_event_loop() -> None:
    seen: list[str] = []

    def fn(items: list[int]) -> list[int]:
        seen.append(threading.current_thread().name)
        return items

    async def main() -> None:
        b = MicroBatcher(fn, window_s=0.0, max_batch=2)
        await b.submit(1)
        await b.close()

    asyncio.run(main())
    assert seen and seen[0].startswith("glossrec-batch")


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, window_s=0.0, max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, window_s=-1.0)


def test_the_window_follows_a_recent_batch_time_within_its_bounds() -> None:
    b = MicroBatcher(lambda x: x, window_s=0.015, window_fraction=0.1, max_window_s=0.5)
    assert b.current_window_s() == 0.015  # nothing measured yet
    b.stats.record(8, 2.0)
    assert b.current_window_s() == pytest.approx(0.2)
    b.stats.record(8, 60.0)
    assert b.current_window_s() == 0.5  # capped
    fixed = MicroBatcher(lambda x: x, window_s=0.015)
    fixed.stats.record(8, 60.0)
    assert fixed.current_window_s() == 0.015
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, window_s=0.1, window_fraction=0.1, max_window_s=0.05)


def _spread_submissions(window_fraction: float) -> list[list[int]]:
    """A first batch that takes 0.4 s, then two requests 50 ms apart: the batches formed."""
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            time.sleep(0.4)
        return items

    async def main() -> None:
        b = MicroBatcher(fn, window_s=0.01, max_batch=8, window_fraction=window_fraction,
                         max_window_s=1.0)
        await b.submit(0)

        async def late(i: int, delay: float) -> int:
            await asyncio.sleep(delay)
            return await b.submit(i)

        await asyncio.gather(late(1, 0.0), late(2, 0.05))
        await b.close()

    asyncio.run(main())
    return calls[1:]


def test_a_window_that_follows_the_batch_time_gathers_requests_that_arrive_spread_out() -> None:
    # 50 ms apart: a fixed 10 ms window splits them; a window of the last batch's whole time
    # (0.4 s) gathers them.
    assert _spread_submissions(0.0) == [[1], [2]]
    assert _spread_submissions(1.0) == [[1, 2]]


def test_each_batch_is_logged_at_debug_with_its_size(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        b = MicroBatcher(lambda items: items, window_s=0.05, max_batch=8)
        await asyncio.gather(*(b.submit(i) for i in range(3)))
        await b.close()

    with caplog.at_level(logging.DEBUG, logger="glossrec.serve.batching"):
        asyncio.run(main())
    first = next(r.getMessage() for r in caplog.records if r.name == "glossrec.serve.batching")
    assert first.startswith("batch of 3 request(s)")
