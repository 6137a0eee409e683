"""What the API runs on: the store, the job queue, the documents, and (once loaded) the model,
the query embedder and the ingestion worker.

Searches of a collection built with another model than the configured one embed their query
with that collection's model, loaded on first use and kept among at most ``max_loaded_models``
(the least recently used other model is dropped first; the configured one always stays).

``open`` is quick (no model), so the process answers ``/healthz`` within a second of its
start; ``load_model`` then runs in the background (importing torch alone takes seconds) and
``/readyz`` turns ready when it is done. Routes reach the services through ``app.deps``;
those that need the model wait for it with a 503 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.batching import DirectEmbedder, QueryBatcher
from app.errors import NotReady
from app.metrics import Metrics
from indexer.documents import DocumentService
from indexer.jobs import JobQueue
from indexer.wiring import document_service, job_queue
from indexer.worker import Worker
from retrieval.config import Settings
from retrieval.errors import ColqwenError, ModelLoadError
from retrieval.fidelity import FidelitySampler
from retrieval.search import QueryModel, Searcher, SearchResult
from retrieval.store import PageStore
from retrieval.types import CollectionInfo

if TYPE_CHECKING:
    from retrieval.encoder import Encoder

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: PageStore
    jobs: JobQueue
    documents: DocumentService
    metrics: Metrics
    run_worker: bool = True
    encoder: Encoder | None = None
    embedder: QueryBatcher | DirectEmbedder | None = None
    load_error: str | None = None
    fidelity: FidelitySampler | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _worker: threading.Thread | None = None
    _loading: asyncio.Task | None = None
    # Models of other collections: name -> a task that loads it into (encoder, embedder).
    _others: OrderedDict[str, asyncio.Task] = field(default_factory=OrderedDict)

    @classmethod
    def open(cls, settings: Settings, *, run_worker: bool) -> Services:
        """Everything but the model; raises ``StoreLocked`` if another process holds the store."""
        store = PageStore.from_settings(settings)
        try:
            jobs = job_queue(settings)
            documents = document_service(settings, store, jobs)
            # No other process can be mid-upload or mid-delete: one host, one store.
            alone = store.kind == "embedded" and jobs.kind == "sqlite"
            documents.uploads.clean_partial(older_than_s=0 if alone else 24 * 3600)
            documents.recover(sweep_uploads=alone)
            metrics = Metrics()
            metrics.track_queue(lambda: jobs.count("queued"))
        except BaseException:
            store.close()
            raise
        monitor = FidelitySampler(
            store,
            settings.fidelity_sample,
            on_recall=lambda mode, name, recall: metrics.fidelity.labels(mode, name).observe(
                recall
            ),
        )
        store.warm_up_in_background()  # the first searches then find the store in memory
        return cls(
            settings, store, jobs, documents, metrics, run_worker=run_worker, fidelity=monitor
        )

    def searcher(self) -> Searcher:
        """The search use case over this service's store and models. Call it from a worker
        thread (``run_in_threadpool``): it reaches the event loop for a collection's model
        (``model_for``) and for the batched query embedding, and only when the query needs
        them."""
        import anyio.from_thread

        def models(info: CollectionInfo) -> QueryModel:
            encoder, embedder = anyio.from_thread.run(self.model_for, info)
            return QueryModel(encoder, lambda text: anyio.from_thread.run(embedder.embed, text))

        def observe(result: SearchResult) -> None:
            self.metrics.observe_search(result.timings)

        observers = [observe] + ([self.fidelity] if self.fidelity is not None else [])
        return Searcher(
            self.store, models, collection=self.settings.collection, observers=observers
        )

    def start_loading(self, encoder: Encoder | None = None) -> None:
        """Load the model in the background, then start the embedder and the worker."""
        self._loading = asyncio.create_task(self._load(encoder), name="load-model")

    async def wait_ready(self) -> None:
        if self._loading is not None:
            await asyncio.shield(self._loading)

    @property
    def ready(self) -> bool:
        return self.embedder is not None

    def require_model(self) -> QueryBatcher | DirectEmbedder:
        if self.embedder is None:
            if self.load_error:
                raise ModelLoadError(self.load_error)
            raise NotReady(f"the model ({self.settings.model}) is still loading; retry shortly")
        return self.embedder

    def models_loaded(self) -> list[str]:
        """The configured model, then those loaded for other collections (most recent last)."""
        loaded = [self.encoder.model_id] if self.encoder is not None else []
        for task in self._others.values():
            if task.done() and not task.cancelled() and task.exception() is None:
                loaded.append(task.result()[0].model_id)
        return loaded

    async def model_for(
        self, info: CollectionInfo
    ) -> tuple[Encoder, QueryBatcher | DirectEmbedder]:
        """The model ``info`` was built with and its query embedder: the configured model, or
        another one, loaded on first use (its first search waits for the load)."""
        default = self.require_model()
        encoder = self.encoder
        assert encoder is not None
        if info.identity.serves(encoder.identity):
            info.check_model(encoder, action="search")
            return encoder, default
        name = info.model
        task = self._others.get(name)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.create_task(self._load_other(info), name=f"load-{name}")
            self._others[name] = task
        self._others.move_to_end(name)
        keep = max(self.settings.max_loaded_models - 1, 1)  # this one at least
        for other_name in [n for n, t in self._others.items() if n != name and t.done()]:
            if len(self._others) <= keep:
                break
            await _stop_loaded(self._others.pop(other_name))  # its waiting queries finish first
        other, embedder = await asyncio.shield(task)
        info.check_model(other, action="search")
        return other, embedder

    async def _load_other(self, info: CollectionInfo) -> tuple[Encoder, QueryBatcher]:
        from retrieval.encoder import Encoder

        settings = self.settings
        log.info("loading %s for collection '%s'", info.model, info.name)
        encoder = await asyncio.to_thread(
            Encoder.load,
            info.model,
            device=settings.device.split(",")[0],
            dtype=settings.dtype,
            max_visual_tokens=info.max_visual_tokens,
            family=info.family,
            query_batch_size=settings.query_batch_size,
        )
        embedder = self._embedder(encoder)
        await embedder.start()
        return encoder, embedder

    def _embedder(self, encoder: Encoder) -> QueryBatcher | DirectEmbedder:
        metrics, settings = self.metrics, self.settings

        def on_batch(size: int, seconds: float) -> None:
            metrics.query_batch.observe(size)
            metrics.query_encode.observe(seconds)

        if settings.query_batching:
            return QueryBatcher(
                encoder.embed_queries,
                max_batch=settings.query_batch_size,
                wait_ms=settings.query_batch_wait_ms,
                max_pending=settings.max_pending_queries,
                on_batch=on_batch,
            )
        return DirectEmbedder(encoder.embed_queries, on_batch=on_batch)

    async def _load(self, encoder: Encoder | None) -> None:
        try:
            if encoder is None:
                from retrieval.encoder import Encoder

                encoder = await asyncio.to_thread(Encoder.from_settings, self.settings)
            if encoder.compiled:
                from retrieval import compile_cache

                folder = self.settings.compile_cache_dir
                warmed = await asyncio.to_thread(compile_cache.warm_up, encoder, folder)
                log.info("model compiled and warmed up in %.0f s", warmed.seconds)
        except ColqwenError as exc:
            self.load_error = str(exc)
            log.error("the model cannot be loaded, searches will fail: %s", exc)
            return
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("the model cannot be loaded, searches will fail")
            return
        embedder = self._embedder(encoder)
        await embedder.start()
        self.encoder, self.embedder = encoder, embedder
        log.info("ready: %s on %s, store %s", encoder.model_id, encoder.device, self.store.kind)
        if self.run_worker:
            self._start_worker()

    def _start_worker(self) -> None:
        assert self.encoder is not None
        worker = Worker(
            self.settings,
            self.encoder,
            self.documents,
            on_pages=self.metrics.pages_ingested.inc,
        )
        self._worker = threading.Thread(
            target=worker.run_forever, args=(self._stop,), name="ingest-worker", daemon=True
        )
        self._worker.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self.embedder is not None:
            await self.embedder.stop()
        for task in self._others.values():
            await _stop_loaded(task)
        if self.fidelity is not None:
            await asyncio.to_thread(self.fidelity.close)
        if self._worker is not None:
            await asyncio.to_thread(self._worker.join, 60)
        self.jobs.close()
        self.store.close()


async def _stop_loaded(task: asyncio.Task) -> None:
    """Stop the embedder of a model loaded for another collection (or its load)."""
    if not task.done():
        task.cancel()
        return
    if task.cancelled() or task.exception() is not None:
        return
    _, embedder = task.result()
    await embedder.stop()
