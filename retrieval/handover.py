"""A device that ingests from its first seconds, then hands over to a compiled model.

Compiling the model's blocks makes the forward pass ~1.4x faster, but costs tens of seconds
of tracing and code generation before the first page (minutes before issue 34). Done on a
thread beside the eager model, it took the interpreter's lock from the thread that launches
the eager model's kernels: eager ran 15 pages/s instead of 45 while it lasted (BENCHMARKS.md).
So each device gets two encoder processes (``retrieval.encoder_process``): an eager one that
takes pages at once, and one that loads, compiles and warms up at the same time, with its own
interpreter. Once the second is ready, batches go to it; the first finishes the batches it
holds, and stops, giving its device memory back.

``Handover`` is a replica (``retrieval.replica``), so the pipeline drives it like any other.
The two models are the same weights: compiled and eager embeddings agree to a per-token
cosine of 0.99956 on average, 0.9989 on the worst token, each as close to a float32 model as
the other (the GPU test checks it; BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from retrieval.errors import ModelLoadError
from retrieval.replica import Derive, Encoded

if TYPE_CHECKING:
    from PIL import Image

    from retrieval.encoder_process import EncoderProcess, Submitted
    from retrieval.types import PageEmbedding

log = logging.getLogger(__name__)


class Handover:
    """``eager`` serves until ``compiled`` is ready, then ``compiled`` does; ``on_status`` hears
    of the switch (or of a compile that failed: the device then stays eager). Driven by one
    thread, as every replica is."""

    def __init__(
        self,
        eager: EncoderProcess,
        compiled: EncoderProcess,
        on_status: Callable[[str], Any] | None = None,
    ) -> None:
        self.device = eager.device
        self.lookahead = eager.lookahead
        self._serving = eager
        self._next: EncoderProcess | None = compiled
        self._retired: EncoderProcess | None = None
        self._stopping: list[threading.Thread] = []
        self._say = on_status or (lambda message: None)
        self._since = time.monotonic()

    @property
    def compiled(self) -> bool:
        """Whether the compiled model serves now."""
        return self._next is None and self._serving.warm_up_s > 0

    def preprocess(self, images: Sequence[Image.Image]) -> Submitted:
        return self._serving.preprocess(images)

    def start(
        self, batch: Submitted, images: Sequence[Image.Image], derive: Derive | None
    ) -> tuple[EncoderProcess, Submitted]:
        self._take_over_if_ready()
        process = self._serving
        return process, process.start(batch, images, derive)

    def collect(self, handle: tuple[EncoderProcess, Submitted]) -> list[Encoded]:
        process, submitted = handle
        try:
            return process.collect(submitted)
        finally:
            if process is self._retired and not process.in_flight:
                self._retire()

    def embed_pages(
        self, images: Sequence[Image.Image], batch_size: int | None = None
    ) -> list[PageEmbedding]:
        handle = self.start(self.preprocess(images), images, None)
        return [page for page, _ in self.collect(handle)]

    def close(self) -> None:
        """Stop every process, and wait for those stopping."""
        for process in (self._serving, self._next, self._retired):
            if process is not None:
                process.close()
        for thread in self._stopping:
            thread.join()

    # --- the switch ----------------------------------------------------------------------------

    def _take_over_if_ready(self) -> None:
        successor = self._next
        if successor is None:
            return
        try:
            if not successor.poll_ready():
                return
        except ModelLoadError as exc:  # out of device memory for two models, a compiler error
            self._next = None
            log.warning("%s: no compiled model, the eager one goes on: %s", self.device, exc)
            self._say(f"{self.device}: compiling failed, going on with the eager model ({exc})")
            return
        self._next, self._retired, self._serving = None, self._serving, successor
        waited = time.monotonic() - self._since
        cache = {"loaded": ", kernels from the compile cache", "saved": ", kernels cached"}
        self._say(
            f"{self.device}: the compiled model took over after {waited:.0f} s (its warm-up "
            f"{successor.warm_up_s:.0f} s{cache.get(successor.cache or '', '')})"
        )
        log.info("%s: compiled model serving after %.1f s", self.device, waited)
        if not self._retired.in_flight:
            self._retire()

    def _retire(self) -> None:
        """Stop the eager process, off this thread: its exit takes a second or so, which the
        device would otherwise wait through."""
        retired, self._retired = self._retired, None
        if retired is not None:
            thread = threading.Thread(target=retired.close, name=f"retire-{self.device}")
            thread.start()
            self._stopping.append(thread)
