"""How many CPU threads each numeric op may use while a GPU runs the model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_cpu_thread_per_op(*, on_gpu: bool) -> Iterator[None]:
    """While the model runs on a GPU, numpy's BLAS and torch's CPU ops use one thread each.

    The stages already run side by side (render processes, preprocess, encode and store
    threads); a BLAS or OpenMP pool of one thread per core behind each small matmul of the
    store stage oversubscribes the cores. Measured on an H200 host (16 cores): 20.2 -> 27.8
    pages/s end to end, the store stage's busy time halved (BENCHMARKS.md). On CPU the model's
    forward pass needs every core: nothing changes there."""
    if not on_gpu:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)
