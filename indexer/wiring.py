"""What the settings select, built in one place: the job queue, the folder of kept originals,
the password sealer and the document service over them. The API, the worker and the CLI all
get theirs here, so a deployment setting means the same to each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indexer.documents import DocumentService
from indexer.jobs import JobQueue
from indexer.secrets import Sealer
from indexer.uploads import UploadFolder
from retrieval.config import Settings
from retrieval.store import PageStore


def job_queue(settings: Settings) -> JobQueue:
    return JobQueue(settings.data_dir / "jobs.sqlite3")


def uploads_dir(settings: Settings) -> Path:
    return settings.data_dir / "uploads"


def document_service(settings: Settings, store: PageStore, jobs: JobQueue) -> DocumentService:
    return DocumentService(
        store, jobs, UploadFolder(uploads_dir(settings)), Sealer.from_settings(settings)
    )


@contextmanager
def open_documents(settings: Settings, store: PageStore) -> Iterator[DocumentService]:
    """The document service over ``store`` with a job queue of its own, closed on exit (a
    command that deletes a document, draws a page or upgrades a collection)."""
    jobs = job_queue(settings)
    try:
        yield document_service(settings, store, jobs)
    finally:
        jobs.close()
