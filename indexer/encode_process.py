"""One encoder process per GPU, for ingestion at the GPU's speed.

In one process, every stage of the pipeline shares one GIL: the forward pass's kernel launches
wait behind the store's conversions and the image processor's Python, and two GPUs fed from one
interpreter reach 1.6x, not 2x (BENCHMARKS.md). Here each device gets a child process that
owns its copy of the model: it preprocesses a batch of page images, runs the model, and
computes each page's FDE and pooled vectors (``page_vectors``), all under its own GIL; the
parent renders, batches and stores. Children die with their parent and ignore Ctrl-C
(``indexer.children``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import numpy as np

from indexer.children import init_child, sigint_blocked
from retrieval.types import CollectionInfo, PageEmbedding

_encoder: Any = None  # the child's Encoder


@dataclass(frozen=True)
class EncoderSpec:
    """How a child builds its encoder: ``factory(device=..., **kwargs)``, a module-level
    function (it is pickled by reference), e.g. ``Encoder.load`` with a checkpoint's path."""

    factory: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


def _start(spec: EncoderSpec, device: str, parent: int) -> None:
    global _encoder
    init_child(None, parent)
    _encoder = spec.factory(device=device, **spec.kwargs)
    if getattr(_encoder, "compiled", False):
        _encoder.warm_up()


def _embed(
    images: list[np.ndarray], info: CollectionInfo
) -> list[tuple[PageEmbedding, dict[str, np.ndarray]]]:
    from PIL import Image

    from retrieval.store.pages import page_vectors

    pages = _encoder.embed_pages([Image.fromarray(a) for a in images], len(images))
    return [(p, page_vectors(info, p, original=False)) for p in pages]


def _ready() -> str:
    return _encoder.device


class EncoderProcess:
    """A child process holding a model on ``device``; ``embed`` is asynchronous."""

    def __init__(self, spec: EncoderSpec, device: str) -> None:
        self.device = device
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=get_context("spawn"),
            initializer=_start,
            initargs=(spec, device, os.getpid()),
        )

    def start(self) -> Future:
        """Load the model (and warm it up) now; the future resolves when it is ready."""
        with sigint_blocked():
            return self._pool.submit(_ready)

    def embed(
        self, images: list[np.ndarray], info: CollectionInfo
    ) -> list[tuple[PageEmbedding, dict[str, np.ndarray]]]:
        """Embed RGB pages (uint8 arrays) and compute their named vectors for ``info``."""
        with sigint_blocked():
            future = self._pool.submit(_embed, images, info)
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def start_all(spec: EncoderSpec, devices: list[str]) -> list[EncoderProcess]:
    """One process per device, loading in parallel; returns when all are ready."""
    processes = [EncoderProcess(spec, d) for d in devices]
    try:
        for ready in [p.start() for p in processes]:
            ready.result()
    except BaseException:
        for p in processes:
            p.close()
        raise
    return processes
