"""The live fidelity monitor: how much the fast search modes lose against exact MaxSim.

A sampled share of searches (``COLQWEN_FIDELITY_SAMPLE``) in ``two_stage`` or ``pooled`` mode
is re-run in ``exact`` mode on a worker thread after the answer has gone out, with the same
query vectors and filter, one at a time (a re-run still in progress makes the next samples
skip: exact search scans every page). The share of exact's top 10 that the served answer also
held is observed in ``colqwen_fidelity_recall_at_10`` and logged, so an operator sees when
``COLQWEN_PREFETCH`` is too small for their corpus.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from typing import Any

import numpy as np

from app.metrics import Metrics
from retrieval.store import PageStore
from retrieval.types import Hit

log = logging.getLogger(__name__)

MONITORED = ("two_stage", "pooled")


class FidelityMonitor:
    def __init__(self, store: PageStore, metrics: Metrics, share: float) -> None:
        self.store = store
        self.metrics = metrics
        self.share = share
        self._busy = threading.Lock()
        self._tasks: set[asyncio.Task] = set()

    def maybe_check(
        self,
        collection: str,
        mode: str,
        query: np.ndarray,
        where: Any,
        served: list[Hit],
    ) -> None:
        """Schedule an exact re-run of a served search, if sampled (returns at once)."""
        if mode not in MONITORED or not served or random.random() >= self.share:
            return
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(self._check, collection, mode, query, where, served)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check(
        self, collection: str, mode: str, query: np.ndarray, where: Any, served: list[Hit]
    ) -> None:
        if not self._busy.acquire(blocking=False):
            return  # one exact scan at a time: skip this sample
        try:
            exact = self.store.search(collection, query, top_k=10, where=where, mode="exact")
            truth = {(h.doc_id, h.page) for h in exact}
            if not truth:
                return
            got = {(h.doc_id, h.page) for h in served[:10]}
            recall = len(got & truth) / len(truth)
            self.metrics.fidelity.labels(mode, collection).observe(recall)
            log.info(
                "fidelity: %s recall@10 against exact %.2f (collection %s)",
                mode,
                recall,
                collection,
            )
        except Exception:
            log.exception("fidelity check failed (collection %s)", collection)
        finally:
            self._busy.release()

    async def drain(self) -> None:
        """Wait for checks in flight (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
