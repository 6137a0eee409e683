"""Child processes that behave: they die with their parent (kill -9 included) and leave Ctrl-C
to it. The render pool is built from these."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context

PARENT_CHECK_S = 0.5


def child_pool(workers: int, memory_limit_mb: int | None = None) -> ProcessPoolExecutor:
    """A pool of spawned processes (never fork a process that holds torch/CUDA). Submit to it
    inside ``sigint_blocked()``: a worker it starts then is born deaf to Ctrl-C."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=init_child,
        initargs=(memory_limit_mb, os.getpid()),
    )


def init_child(memory_limit_mb: int | None, parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the pool, workers stay quiet.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # ignored from now on
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if memory_limit_mb:
        import resource

        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent died (kill -9) is re-parented: it exits instead of waiting forever
    on a pipe nobody writes to (and so does the resource tracker, once the workers are gone)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread; children started meanwhile inherit the mask, so a Ctrl-C
    that reaches the process group while one is still importing does not kill it mid-way."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
