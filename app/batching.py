"""Concurrent queries share one forward pass.

Each request awaits a future; a consumer task takes what is waiting (up to ``max_batch``),
waits ``wait_ms`` for more after the first, embeds them in one call on a worker thread (never
on the event loop) and resolves the futures. Past ``max_pending`` waiting queries, new ones
fail at once with ``Overloaded`` (HTTP 429) instead of queueing forever. ``stop`` lets the
waiting queries finish (for a while), and fails the rest with ``NotReady``: no request hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import numpy as np

from app.errors import NotReady, Overloaded


class QueryBatcher:
    def __init__(
        self,
        embed: Callable[[list[str]], list[np.ndarray]],
        *,
        max_batch: int = 32,
        wait_ms: float = 5.0,
        max_pending: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._embed = embed
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.max_pending = max_pending
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[str, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._running: list[tuple[str, asyncio.Future]] = []  # the batch being embedded
        self._closed = False

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._consume(), name="query-batcher")

    async def stop(self, drain_s: float = 10.0) -> None:
        """Refuse new queries, let those waiting finish within ``drain_s``, fail the rest."""
        self._closed = True
        deadline = time.monotonic() + drain_s
        while self._queue is not None and (self._running or not self._queue.empty()):
            if time.monotonic() > deadline or self._task is None or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = list(self._running)
        while self._queue is not None and not self._queue.empty():
            left.append(self._queue.get_nowait())
        for _, future in left:
            if not future.done():
                future.set_exception(NotReady("the model was unloaded; retry the query"))

    async def embed(self, text: str) -> np.ndarray:
        assert self._queue is not None, "start() the batcher first"
        if self._closed:
            raise NotReady("the model is being unloaded; retry the query")
        if self._queue.qsize() >= self.max_pending:
            raise Overloaded(
                f"{self.max_pending} queries are already waiting for the model; retry shortly"
            )
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((text, future))
        return await future

    async def _consume(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            batch = [(t, f) for t, f in batch if not f.cancelled()]
            if not batch:
                continue
            start = time.perf_counter()
            self._running = batch  # left set if cancelled meanwhile: stop() fails these
            try:
                vectors = await asyncio.to_thread(self._embed, [t for t, _ in batch])
            except Exception as exc:
                self._running = []
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self._running = []
            if self.on_batch:
                self.on_batch(len(batch), time.perf_counter() - start)
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():
                    future.set_result(vector)


class DirectEmbedder:
    """No batching: each query gets its own forward pass (on a worker thread)."""

    def __init__(self, embed: Callable[[list[str]], list[np.ndarray]], on_batch=None) -> None:
        self._embed = embed
        self.on_batch = on_batch

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def embed(self, text: str) -> np.ndarray:
        start = time.perf_counter()
        [vector] = await asyncio.to_thread(self._embed, [text])
        if self.on_batch:
            self.on_batch(1, time.perf_counter() - start)
        return vector
