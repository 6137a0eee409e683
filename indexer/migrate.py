"""From one host to many: an embedded deployment's queued jobs and kept originals moved into
the database of a distributed one (``colqwen jobs migrate``).

Every original in the old uploads folder is copied into the database (those of indexed
documents too: page images are drawn from them); every job still queued or running (its
process stopped) is queued again there, its sealed password sealed again with the
distributed key, and removed from the old job table, so that starting the old deployment
again does not ingest it twice. Finished jobs stay where they were, as history. Safe to run
again after an interruption: originals are kept once, and a job moved already is skipped.
Stop the embedded deployment first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from indexer.database import PostgresDatabase, SqliteDatabase
from indexer.jobs import JobQueue
from indexer.secrets import Sealer
from indexer.uploads import UploadFolder
from retrieval.config import Settings
from retrieval.errors import ConfigurationError, NotFound


@dataclass
class Migrated:
    originals: int = 0  # copied into the database
    jobs: int = 0  # queued there
    skipped: int = 0  # jobs already queued there


def migrate_embedded(
    source: Path,
    settings: Settings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> Migrated:
    """Move what the embedded deployment in data directory ``source`` has queued into the
    database ``settings.database_url`` names. ``on_progress(done, total)`` per item."""
    from indexer.wiring import job_queue, uploads

    if settings.database_url is None:
        raise ConfigurationError(
            "set COLQWEN_DATABASE_URL (and COLQWEN_SECRET_KEY) to the distributed deployment's "
            "database: that is where the jobs and originals go"
        )
    table = source / "jobs.sqlite3"
    if not table.is_file():
        raise NotFound(f"{source} holds no job table (jobs.sqlite3): give the old data directory")
    old = JobQueue(SqliteDatabase(table))
    new = job_queue(settings)
    try:
        target = uploads(settings, new)
        assert target.shared is not None and isinstance(new.db, PostgresDatabase)
        old_files = UploadFolder(source / "uploads")
        new_sealer = Sealer.from_settings(settings)
        # The old deployment sealed with its key file, unless it had COLQWEN_SECRET_KEY set.
        key_file = source / "secret.key"
        old_sealer = Sealer(key_file.read_bytes().strip()) if key_file.is_file() else new_sealer
        pending = old.db.execute(
            "SELECT id FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at"
        ).fetchall()
        doc_ids = old_files.doc_ids()
        total, done = len(doc_ids) + len(pending), 0
        report = Migrated()
        for doc_id in doc_ids:
            path = old_files.path_of(doc_id)
            if path is not None:
                target.shared.put(doc_id, path)
                report.originals += 1
            done += 1
            if on_progress:
                on_progress(done, total)
        for row in pending:
            job = old.get(row["id"])
            if new.active_for(job.doc_id, job.collection) is not None:
                report.skipped += 1
            else:
                password = old_sealer.unseal(job.password, name=job.name)
                new.create(
                    doc_id=job.doc_id,
                    collection=job.collection,
                    name=job.name,
                    path=Path(job.path),
                    metadata=job.metadata,
                    password=new_sealer.seal(password),
                )
                report.jobs += 1
            old.db.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
            done += 1
            if on_progress:
                on_progress(done, total)
        return report
    finally:
        old.close()
        new.close()
