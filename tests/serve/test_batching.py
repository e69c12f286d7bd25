from __future__ import annotations

import asyncio
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
