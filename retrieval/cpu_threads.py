"""How many threads numpy's BLAS may use while a GPU runs the model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_blas_thread_per_op(*, on_gpu: bool) -> Iterator[None]:
    """While the model runs on a GPU, numpy's BLAS uses one thread per call.

    The stages already run side by side (render processes, preprocess, encode and store
    threads); a BLAS pool of one thread per core behind each small matmul of the store stage
    oversubscribes the cores. Measured on an H200 host (16 cores): 20.2 -> 27.8 pages/s end
    to end, the store stage's busy time halved (BENCHMARKS.md).

    torch's own CPU threads (its OpenMP pool) are left alone: the compiled graphs guard on
    their count, and a changed count runs every block eager (``Encoder.forward``). On CPU the
    model's forward pass needs every core: nothing changes there."""
    if not on_gpu:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
