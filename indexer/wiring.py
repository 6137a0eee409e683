"""What the settings select, built in one place: the database, the job queue, the folder of
kept originals, the password sealer and the document service over them. The API, the worker
and the CLI all get theirs here, so a deployment setting means the same to each.

Embedded (the default): SQLite and files under the data directory, one host. Distributed
(``COLQWEN_DATABASE_URL``): the queue and the originals in PostgreSQL, any number of API
replicas and workers on any hosts, each with a data directory of its own (temporary files
and its copies of originals)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indexer.database import Database, PostgresDatabase, SqliteDatabase
from indexer.documents import DocumentService
from indexer.jobs import JobQueue
from indexer.originals import PostgresOriginals
from indexer.secrets import Sealer
from indexer.uploads import UploadFolder
from retrieval.config import Settings
from retrieval.store import PageStore


def database(settings: Settings) -> Database:
    if settings.database_url is not None:
        return PostgresDatabase(settings.database_url.get_secret_value())
    return SqliteDatabase(settings.data_dir / "jobs.sqlite3")


def job_queue(settings: Settings) -> JobQueue:
    """The queue; a worker or the API also keeps its originals in its database (``uploads``)."""
    return JobQueue(database(settings))


def uploads_dir(settings: Settings) -> Path:
    return settings.data_dir / "uploads"


def uploads(settings: Settings, jobs: JobQueue) -> UploadFolder:
    """The originals: this host's folder, kept in the queue's database when it is shared."""
    shared = PostgresOriginals(jobs.db) if isinstance(jobs.db, PostgresDatabase) else None
    return UploadFolder(uploads_dir(settings), shared=shared)


def document_service(settings: Settings, store: PageStore, jobs: JobQueue) -> DocumentService:
    sealer = Sealer.from_settings(settings)  # first: refuses a distributed start without a key
    return DocumentService(store, jobs, uploads(settings, jobs), sealer)


@contextmanager
def open_documents(settings: Settings, store: PageStore) -> Iterator[DocumentService]:
    """The document service over ``store`` with a job queue of its own, closed on exit (a
    command that deletes a document, draws a page or upgrades a collection)."""
    jobs = job_queue(settings)
    try:
        yield document_service(settings, store, jobs)
    finally:
        jobs.close()
