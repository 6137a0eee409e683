"""The ingestion worker: claims jobs from the queue and runs the pipeline on each.

``colqwen serve`` runs one in-process (the embedded store allows one process); ``colqwen worker``
runs it alone, for deployments where the API and N workers share a Qdrant server and a data
volume. A heartbeat renews the job's lease while the pipeline works; if the process dies, the
lease expires and another worker (or this one, restarted) resumes the job. The heartbeat also
notices a job cancelled under it (its document deleted): the pipeline stops and whatever it
stored is deleted, so a deleted document stays deleted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from indexer.documents import DocumentService
from indexer.ingest import ingest_pipeline, render_pool
from indexer.jobs import Job
from indexer.pipeline import IngestProgress
from indexer.render_pool import Renderer
from indexer.sources import SourceFile
from retrieval.config import Settings
from retrieval.encoder import Encoder
from retrieval.errors import Cancelled, ColqwenError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
CHECK_S = 0.5  # how often a running job is checked for cancellation
# A worker's render pool (a process a core) is closed after this long without a job, and
# started again by the next: kept while jobs come, it spares each a second or more of start.
POOL_IDLE_S = 60.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        encoder: Encoder,
        documents: DocumentService,
        *,
        poll_s: float = 0.5,
        on_pages: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.documents = documents
        self.store = documents.store
        self.jobs = documents.jobs
        self.poll_s = poll_s
        self.on_pages = on_pages
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._shutdown = threading.Event()
        self._renderer: Renderer | None = None  # run_forever's, shared by its jobs
        self._keep_pool = False
        if self.store.kind == "embedded" and self.jobs.kind == "sqlite":
            # The embedded store is locked to this process, and the queue is on this host: no
            # other worker can hold a job.
            requeued = self.jobs.release_all_running()
            if requeued:
                log.info("requeued %d jobs interrupted by the last shutdown", requeued)

    def run_forever(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; a job in progress then goes back to the queue. One
        render pool serves the jobs that come one after another (``POOL_IDLE_S``)."""
        self._shutdown = stop
        self._keep_pool = True
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    worked = self.run_one()
                except Exception:
                    log.exception("worker loop error")
                    worked = False
                if worked:
                    idle_since = time.monotonic()
                    continue
                if self._renderer is not None and time.monotonic() - idle_since > POOL_IDLE_S:
                    self._close_pool()
                self.jobs.wait_for_work(self.poll_s, stop)
        finally:
            self._keep_pool = False
            self._close_pool()

    def _pool(self) -> Renderer | None:
        """The render pool kept for the jobs to come (started by the first), if one is kept."""
        if self._renderer is None and self._keep_pool:
            self._renderer = render_pool(self.settings, self.encoder.family).start()
        return self._renderer

    def _close_pool(self) -> None:
        if self._renderer is not None:
            renderer, self._renderer = self._renderer, None
            renderer.close()

    def run_one(self) -> bool:
        """Claim and process one job; False when the queue is empty."""
        job = self.jobs.claim(self.owner, self.settings.job_lease_s)
        if job is None:
            return False
        log.info("job %s: %s (attempt %d)", job.id, job.name, job.attempts)
        progress = _JobProgress()
        done, lost = threading.Event(), threading.Event()
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(job, progress, done, lost), daemon=True
        )
        heartbeat.start()
        try:
            error, pages = self._process(job, progress, lost)
        except Cancelled:
            error, pages = None, 0
        except Exception as exc:
            if not lost.is_set() and not self._holds(job):
                # Cancelled (its document deleted) or taken over before the heartbeat saw it,
                # and failing for that reason (its pages deleted under it): not to retry.
                lost.set()
            if job.attempts < MAX_ATTEMPTS and not lost.is_set():
                log.warning(
                    "job %s (%s) attempt %d failed, retried after its lease: %s",
                    job.id,
                    job.name,
                    job.attempts,
                    exc,
                )
                return True  # left running: its lease expires and it is retried
            error, pages = f"{type(exc).__name__}: {exc}", progress.done
        finally:
            done.set()
            heartbeat.join()
        total = progress.total or pages
        if self._shutdown.is_set() and lost.is_set() and self.jobs.release(job.id, self.owner):
            log.info("job %s: back in the queue, to resume at the next start", job.id)
            return True
        if lost.is_set() or not self.jobs.finish(
            job.id, self.owner, error=error, pages_done=pages, pages_total=total
        ):
            self._lost(job)
            return True
        if error:
            log.warning("job %s failed: %s", job.id, error)
            self.documents.release_upload(job.doc_id)
        else:
            log.info("job %s done: %s, %d pages", job.id, job.name, pages)
        return True

    def _process(
        self, job: Job, progress: _JobProgress, cancel: threading.Event
    ) -> tuple[str | None, int]:
        last = 0

        def on_progress(state: IngestProgress) -> None:
            nonlocal last
            progress.update(state)
            if self.on_pages and state.pages_done > last:
                self.on_pages(state.pages_done - last)
            last = state.pages_done

        pipeline = ingest_pipeline(
            self.settings,
            self.store,
            job.collection,
            self.encoder,
            renderer=self._pool(),
            on_progress=on_progress,
        )
        path = self.documents.original(job.doc_id, job.path)
        if path is None:
            return f"{job.name}: its uploaded original is no longer kept; upload it again", 0
        source = SourceFile(
            path,
            job.name,
            metadata=job.metadata,
            password=self.documents.sealer.unseal(job.password, name=job.name),
            password_sealed=job.password,
        )
        report = pipeline.run([source], cancel=cancel)
        [result] = report.documents
        log.info(
            "job %s: %d of its %d pages embedded by this attempt (the rest stored before)",
            job.id,
            result.embedded,
            result.pages,
        )
        if result.status == "failed":
            return result.error, progress.done
        return None, result.pages

    def _holds(self, job: Job) -> bool:
        """Whether the job is still ours; when the job table cannot say, it is taken to be."""
        try:
            return self.jobs.holds(job.id, self.owner)
        except Exception:
            log.exception("job %s: cannot reach the job table", job.id)
            return True

    def _lost(self, job: Job) -> None:
        """The job was cancelled (its document deleted) or taken over while it ran."""
        try:
            current = self.jobs.get(job.id)
        except ColqwenError:
            current = None
        if current is not None and current.status == "cancelled":
            log.info("job %s cancelled (%s): deleting what it stored", job.id, current.error)
            self.documents.forget(job.collection, job.doc_id)
        else:
            log.warning("job %s: lease lost to another worker; left to it", job.id)

    def _heartbeat(
        self, job: Job, progress: _JobProgress, done: threading.Event, lost: threading.Event
    ) -> None:
        """Renew the lease with progress; set ``lost`` as soon as the job is no longer ours."""
        lease = self.settings.job_lease_s
        renew_every = max(1, round(lease / 3 / CHECK_S))
        ticks = 0
        while not done.wait(CHECK_S):
            ticks += 1
            if self._shutdown.is_set():
                lost.set()  # stop the pipeline: the job goes back to the queue
                return
            try:
                if ticks % renew_every == 0:
                    ours = self.jobs.renew(
                        job.id, self.owner, lease, progress.done, progress.total or None
                    )
                else:
                    ours = self.jobs.holds(job.id, self.owner)
            except Exception:
                log.exception("job %s: cannot reach the job table", job.id)
                continue
            if not ours:
                lost.set()
                return


class _JobProgress:
    """A job's progress over its whole document: pages stored by earlier attempts count."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0

    def update(self, state: IngestProgress) -> None:
        self.total = state.pages_resumed + state.pages_total
        self.done = min(state.pages_resumed + state.pages_done, self.total)
