"""The query batcher: concurrent queries share forward passes, and stopping it (shutdown, or a
model unloaded to make room for another) never leaves a request hanging."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from app.batching import QueryBatcher
from app.errors import NotReady


def run(coro):
    return asyncio.run(coro)


def test_concurrent_queries_share_a_forward_pass_and_get_their_own_vectors():
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return [np.full((2, 4), len(t), np.float32) for t in texts]

    async def main():
        batcher = QueryBatcher(embed, max_batch=8, wait_ms=20)
        await batcher.start()
        got = await asyncio.gather(*(batcher.embed("x" * n) for n in range(1, 6)))
        await batcher.stop()
        return got

    got = run(main())
    assert [float(v[0, 0]) for v in got] == [1, 2, 3, 4, 5]
    assert len(calls) == 1 and sorted(calls[0]) == ["x" * n for n in range(1, 6)]


def test_stop_lets_waiting_queries_finish_then_fails_the_rest_and_refuses_new_ones():
    release = threading.Event()

    def slow(texts):
        release.wait(5)
        return [np.zeros((1, 4), np.float32) for _ in texts]

    async def main():
        batcher = QueryBatcher(slow, max_batch=1, wait_ms=0)
        await batcher.start()
        first = asyncio.create_task(batcher.embed("a"))
        second = asyncio.create_task(batcher.embed("b"))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(batcher.stop(drain_s=0.2))
        await asyncio.sleep(0.05)
        with pytest.raises(NotReady):
            await batcher.embed("too late")
        await stopping  # the drain time passes with "a" still running: both fail, none hangs
        release.set()
        results = await asyncio.wait_for(
            asyncio.gather(first, second, return_exceptions=True), timeout=2
        )
        return results

    results = run(main())
    assert all(isinstance(r, NotReady) for r in results)


def test_stop_drains_queries_that_finish_in_time():
    async def main():
        batcher = QueryBatcher(lambda t: [np.ones((1, 4), np.float32)] * len(t), wait_ms=0)
        await batcher.start()
        pending = [asyncio.create_task(batcher.embed(str(i))) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.stop()
        return await asyncio.gather(*pending)

    assert len(run(main())) == 5
