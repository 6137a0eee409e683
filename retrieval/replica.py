"""The replica: a model on one device, as the ingestion pipeline drives it.

Two kinds implement it: ``retrieval.encoder.Encoder`` (the model in this process; data-parallel
copies on other devices are replicas too) and ``retrieval.encoder_process.EncoderProcess``
(the model in a process of its own, one per device, so that the thread launching its kernels
never waits for this interpreter's GIL). ``Encoder.replicas`` lists the ones ingestion uses.

The pipeline keeps ``lookahead`` batches started ahead of the one it collects, so the device
always has work queued:

    handle = replica.start(replica.preprocess(images), images, derive)
    ...
    for embedding, derived in replica.collect(handle): ...

``derive`` (the store's ``derived_vectors`` for the collection: FDE, pooled vectors) is applied
to each page by the replica, beside its device: in its own process, that CPU work leaves the
parent, which every device shares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL import Image

    from retrieval.types import PageEmbedding

Derive = Callable[["PageEmbedding"], Any]
# A page's embedding and what ``derive`` made of it (None without one).
Encoded = tuple["PageEmbedding", Any]


class Replica(Protocol):
    device: str  # "cuda:0", "cpu", ...
    lookahead: int  # batches started ahead of the one collected

    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        """The processor's CPU work on a batch of pages (or nothing, where the replica does
        it itself): what ``start`` takes."""

    def start(self, batch: Any, images: Sequence[Image.Image], derive: Derive | None) -> Any:
        """Start the forward pass of ``batch`` (``preprocess`` of ``images``) and return a
        handle at once, without waiting for the device; on running out of device memory the
        pages are embedded in smaller batches."""

    def collect(self, handle: Any) -> list[Encoded]:
        """Wait for a started batch: its pages in order, each with ``derive`` of it."""
