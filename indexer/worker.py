"""The ingestion worker: claims jobs from the queue and runs the pipeline on each.

``colqwen serve`` runs one in-process (the embedded store allows one process); ``colqwen worker``
runs it alone, for deployments where the API and N workers share a Qdrant server and a data
volume. A heartbeat renews the job's lease while the pipeline works; if the process dies, the
lease expires and another worker (or this one, restarted) resumes the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from indexer.jobs import Job, JobQueue
from indexer.pipeline import IngestPipeline, IngestProgress
from indexer.render import RenderOptions
from indexer.sources import SourceFile
from retrieval.config import Settings
from retrieval.encoder import Encoder
from retrieval.store import PageStore

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


def job_queue(settings: Settings) -> JobQueue:
    return JobQueue(settings.data_dir / "jobs.sqlite3")


def uploads_dir(settings: Settings) -> Path:
    return settings.data_dir / "uploads"


class Worker:
    def __init__(
        self,
        settings: Settings,
        encoder: Encoder,
        store: PageStore,
        jobs: JobQueue,
        *,
        poll_s: float = 0.5,
        on_pages: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.store = store
        self.jobs = jobs
        self.poll_s = poll_s
        self.on_pages = on_pages
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        if store.kind == "embedded":
            # The embedded store is locked to this process: no other worker can hold a job.
            requeued = jobs.release_all_running()
            if requeued:
                log.info("requeued %d jobs interrupted by the last shutdown", requeued)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                worked = self.run_one()
            except Exception:
                log.exception("worker loop error")
                worked = False
            if not worked:
                stop.wait(self.poll_s)

    def run_one(self) -> bool:
        """Claim and process one job; False when the queue is empty."""
        job = self.jobs.claim(self.owner, self.settings.job_lease_s)
        if job is None:
            return False
        log.info("job %s: %s (attempt %d)", job.id, job.name, job.attempts)
        progress = IngestProgress(files_total=1)
        done = threading.Event()
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(job, progress, done), daemon=True
        )
        heartbeat.start()
        try:
            error, pages = self._process(job, progress)
        except Exception as exc:
            log.exception("job %s failed", job.id)
            if job.attempts < MAX_ATTEMPTS:
                done.set()
                return True  # left running: its lease expires and it is retried
            error, pages = f"{type(exc).__name__}: {exc}", progress.pages_done
        finally:
            done.set()
            heartbeat.join()
        self.jobs.finish(
            job.id,
            self.owner,
            error=error,
            pages_done=pages,
            pages_total=progress.pages_total or pages,
        )
        return True

    def _process(self, job: Job, progress: IngestProgress) -> tuple[str | None, int]:
        settings = self.settings
        self.store.ensure_collection_for(job.collection, settings, self.encoder.dim)
        last = 0

        def on_progress(state: IngestProgress) -> None:
            nonlocal last
            progress.pages_done, progress.pages_total = state.pages_done, state.pages_total
            if self.on_pages and state.pages_done > last:
                self.on_pages(state.pages_done - last)
            last = state.pages_done

        pipeline = IngestPipeline(
            self.encoder,
            self.store,
            job.collection,
            render_options=RenderOptions.from_settings(settings),
            render_workers=settings.render_workers,
            batch_size=settings.batch_size,
            max_pages=settings.max_pages,
            on_progress=on_progress,
        )
        source = SourceFile(Path(job.path), job.name, metadata=job.metadata, password=job.password)
        report = pipeline.run([source])
        [result] = report.documents
        pages = result.pages if result.status in ("indexed", "skipped") else progress.pages_done
        return (result.error if result.status == "failed" else None), pages

    def _heartbeat(self, job: Job, progress: IngestProgress, done: threading.Event) -> None:
        interval = self.settings.job_lease_s / 3
        while not done.wait(interval):
            if not self.jobs.renew(
                job.id,
                self.owner,
                self.settings.job_lease_s,
                progress.pages_done,
                progress.pages_total or None,
            ):
                log.warning("job %s: lease lost", job.id)
                return
