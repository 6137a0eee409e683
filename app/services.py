"""What the API runs on: the store, the model, the job queue, the query embedder, the worker.

Built once at startup (``start``) and torn down at shutdown (``stop``); routes reach it through
``app.deps``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from app.batching import DirectEmbedder, QueryBatcher
from app.metrics import Metrics
from indexer.jobs import JobQueue
from indexer.worker import Worker, job_queue
from retrieval.config import Settings
from retrieval.encoder import Encoder
from retrieval.store import PageStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: PageStore
    encoder: Encoder
    jobs: JobQueue
    embedder: QueryBatcher | DirectEmbedder
    metrics: Metrics
    render_lock: threading.Lock = field(default_factory=threading.Lock)  # PDFium: one at a time
    _stop: threading.Event = field(default_factory=threading.Event)
    _worker: threading.Thread | None = None

    @classmethod
    async def start(
        cls, settings: Settings, *, run_worker: bool, encoder: Encoder | None = None
    ) -> Services:
        store = PageStore.from_settings(settings)  # StoreLocked if another process holds it
        try:
            encoder = encoder or Encoder.from_settings(settings)
            metrics = Metrics()
            jobs = job_queue(settings)
            metrics.track_queue(lambda: jobs.count("queued"))

            def on_batch(size: int, seconds: float) -> None:
                metrics.query_batch.observe(size)
                metrics.query_encode.observe(seconds)

            embedder = (
                QueryBatcher(
                    encoder.embed_queries,
                    max_batch=settings.query_batch_size,
                    wait_ms=settings.query_batch_wait_ms,
                    max_pending=settings.max_pending_queries,
                    on_batch=on_batch,
                )
                if settings.query_batching
                else DirectEmbedder(encoder.embed_queries, on_batch=on_batch)
            )
            await embedder.start()
        except BaseException:
            store.close()
            raise
        services = cls(settings, store, encoder, jobs, embedder, metrics)
        if run_worker:
            services._start_worker()
        return services

    def _start_worker(self) -> None:
        worker = Worker(
            self.settings,
            self.encoder,
            self.store,
            self.jobs,
            on_pages=self.metrics.pages_ingested.inc,
        )
        self._worker = threading.Thread(
            target=worker.run_forever, args=(self._stop,), name="ingest-worker", daemon=True
        )
        self._worker.start()

    async def stop(self) -> None:
        self._stop.set()
        await self.embedder.stop()
        if self._worker is not None:
            self._worker.join(timeout=60)
        self.jobs.close()
        self.store.close()
