"""The live fidelity check: how much the fast search modes lose against exact MaxSim.

A sampled share of searches (``COLQWEN_FIDELITY_SAMPLE``) in ``two_stage`` or ``pooled`` mode
is re-run in ``exact`` mode on a thread of its own after the answer has gone out, with the same
query vectors and filter, one at a time (a re-run still in progress makes the next samples
skip: exact search scans every page). The share of exact's top 10 that the served answer also
held goes to ``on_recall`` (the service's ``colqwen_fidelity_recall_at_10``) and the log, so an
operator sees when ``COLQWEN_PREFETCH`` is too small for their corpus.

It is the one other caller of ``PageStore.search`` besides the search use case: the oracle.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retrieval.search import SearchResult
    from retrieval.store import PageStore

log = logging.getLogger(__name__)

MONITORED = ("two_stage", "pooled")


class FidelitySampler:
    """A search observer (``Searcher(observers=...)``): ``on_recall(mode, collection,
    recall)`` for each sampled search, from its own thread."""

    def __init__(
        self,
        store: PageStore,
        share: float,
        on_recall: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.share = share
        self.on_recall = on_recall
        self._busy = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fidelity")

    def __call__(self, result: SearchResult) -> None:
        """Schedule an exact re-run of a served search, if sampled (returns at once)."""
        if result.mode not in MONITORED or not result.hits or result.vectors is None:
            return
        if random.random() >= self.share or not self._busy.acquire(blocking=False):
            return  # not sampled, or one exact scan at a time: skip this sample
        try:
            self._pool.submit(self._check, result)
        except RuntimeError:  # closed meanwhile
            self._busy.release()

    def _check(self, result: SearchResult) -> None:
        try:
            exact = self.store.search(
                result.collection, result.vectors, top_k=10, where=result.where, mode="exact"
            )
            truth = {(h.doc_id, h.page) for h in exact}
            if not truth:
                return
            got = {(h.doc_id, h.page) for h in result.hits[:10]}
            recall = len(got & truth) / len(truth)
            if self.on_recall is not None:
                self.on_recall(result.mode, result.collection, recall)
            log.info(
                "fidelity: %s recall@10 against exact %.2f (collection %s)",
                result.mode,
                recall,
                result.collection,
            )
        except Exception:
            log.exception("fidelity check failed (collection %s)", result.collection)
        finally:
            self._busy.release()

    def close(self) -> None:
        """Wait for the check in flight (at shutdown, before the store closes)."""
        self._pool.shutdown(wait=True)
