"""The durable ingestion queue: a job table in SQLite under the data directory (embedded), or
in PostgreSQL (``COLQWEN_DATABASE_URL``: API replicas and workers on any hosts).

An accepted upload is a row here (and its original kept, ``indexer.uploads``) before the API
answers, so nothing accepted is lost. Workers claim jobs atomically with a lease and renew it
while they work; a job whose worker died is claimed again once its lease has expired, and
resumes where the pipeline left it (stored pages are not embedded again). The SQL is written
once for both databases (``indexer.database``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from indexer.database import Database, Row, SqliteDatabase
from retrieval.errors import NotFound

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
CHANNEL = "colqwen_jobs"  # notified when a job is queued (PostgreSQL: workers LISTEN)
# A job's fields its owner is not shown (``Job.public``): where its file is, what its pages
# will carry, its sealed password.
PRIVATE_FIELDS = frozenset({"path", "metadata", "password"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    doc_id TEXT NOT NULL,
    collection TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    password TEXT,  -- sealed (indexer.secrets), never plain text
    status TEXT NOT NULL DEFAULT 'queued',
    pages_done INTEGER NOT NULL DEFAULT 0,
    pages_total INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires {float},
    created_at {float} NOT NULL,
    updated_at {float} NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_doc ON jobs (doc_id, collection, status);
"""


@dataclass
class Job:
    id: str
    doc_id: str
    collection: str
    name: str
    path: str
    metadata: dict[str, Any]
    password: str | None
    status: JobStatus
    pages_done: int
    pages_total: int | None
    error: str | None
    attempts: int
    created_at: float
    updated_at: float

    def public(self) -> dict[str, Any]:
        """What a job's owner is shown of it (the API's ``JobPublic``, the web UI): its state
        and progress, not its file's path, metadata or sealed password."""
        public = {f.name: getattr(self, f.name) for f in fields(self)}
        public["job_id"] = public.pop("id")
        return {k: v for k, v in public.items() if k not in PRIVATE_FIELDS}

    @classmethod
    def _from_row(cls, row: Row) -> Job:
        data = {k: v for k, v in row.items() if k not in ("lease_owner", "lease_expires")}
        data["metadata"] = json.loads(data["metadata"])
        return cls(**data)


class JobQueue:
    """Thread-safe; any number of processes may share it (SQLite: of one host)."""

    def __init__(self, db: Database | Path) -> None:
        self.db = db if not isinstance(db, Path) else SqliteDatabase(db)
        floats = "DOUBLE PRECISION" if self.db.kind == "postgres" else "REAL"
        self.db.script(_SCHEMA.replace("{float}", floats))

    @property
    def kind(self) -> str:
        return self.db.kind

    def create(
        self,
        *,
        doc_id: str,
        collection: str,
        name: str,
        path: Path,
        metadata: dict[str, Any],
        password: str | None = None,
    ) -> Job:
        """Queue a job. ``password``: already sealed (``indexer.secrets.Sealer``)."""
        now = time.time()
        job_id = uuid.uuid4().hex
        self.db.execute(
            "INSERT INTO jobs (id, doc_id, collection, name, path, metadata, password, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, doc_id, collection, name, str(path), json.dumps(metadata), password, now, now),
        )
        self.db.notify(CHANNEL)
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job '{job_id}' does not exist")
        return Job._from_row(row)

    def active_for(self, doc_id: str, collection: str) -> Job | None:
        """A queued or running job for this document, if any."""
        row = self.db.execute(
            "SELECT * FROM jobs WHERE doc_id = ? AND collection = ?"
            " AND status IN ('queued', 'running')"
            " ORDER BY created_at LIMIT 1",
            (doc_id, collection),
        ).fetchone()
        return None if row is None else Job._from_row(row)

    def cancel_for(self, doc_id: str, collection: str, reason: str) -> int:
        """Cancel the queued or running jobs of a document; its worker stops at its next check."""
        cursor = self.db.execute(
            "UPDATE jobs SET status = 'cancelled', error = ?, password = NULL, lease_owner = NULL,"
            " lease_expires = NULL, updated_at = ? WHERE doc_id = ? AND collection = ?"
            " AND status IN ('queued', 'running')",
            (reason, time.time(), doc_id, collection),
        )
        return cursor.rowcount

    def cancelled_last(self, since_s: float = 7 * 86400) -> list[tuple[str, str]]:
        """(doc_id, collection) of recently cancelled jobs that no later job followed."""
        rows = self.db.execute(
            "SELECT doc_id, collection FROM jobs j WHERE status = 'cancelled'"
            " AND updated_at > ? AND NOT EXISTS (SELECT 1 FROM jobs k WHERE"
            " k.doc_id = j.doc_id AND k.collection = j.collection"
            " AND k.created_at > j.created_at)",
            (time.time() - since_s,),
        ).fetchall()
        return [(r["doc_id"], r["collection"]) for r in rows]

    def holds(self, job_id: str, owner: str) -> bool:
        """Whether ``owner`` still runs this job (not cancelled, nor taken over)."""
        row = self.db.execute(
            "SELECT status, lease_owner FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return row is not None and row["status"] == "running" and row["lease_owner"] == owner

    def references(self, doc_id: str) -> bool:
        """Whether a queued or running job of any collection needs this document's upload."""
        row = self.db.execute(
            "SELECT 1 FROM jobs WHERE doc_id = ? AND status IN ('queued', 'running') LIMIT 1",
            (doc_id,),
        ).fetchone()
        return row is not None

    def claim(self, owner: str, lease_s: float) -> Job | None:
        """Atomically take the oldest queued job, or a running one whose lease expired."""
        now = time.time()
        with self.db.claiming() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'queued'"
                " OR (status = 'running' AND lease_expires < ?) ORDER BY created_at LIMIT 1"
                + db.lock_clause,
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', lease_owner = ?, lease_expires = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (owner, now + lease_s, now, row["id"]),
            )
        return self.get(row["id"])

    def renew(
        self, job_id: str, owner: str, lease_s: float, pages_done: int, pages_total: int | None
    ) -> bool:
        """Extend the lease and record progress; False if the job is no longer ours.

        Progress never goes back (a resumed attempt starts from what is stored) and never passes
        the total."""
        now = time.time()
        if pages_total is not None:
            pages_done = min(pages_done, pages_total)
        cursor = self.db.execute(
            "UPDATE jobs SET lease_expires = ?,"
            " pages_done = CASE WHEN pages_done > ? THEN pages_done ELSE ? END,"
            " pages_total = ?, updated_at = ?"
            " WHERE id = ? AND lease_owner = ? AND status = 'running'",
            (now + lease_s, pages_done, pages_done, pages_total, now, job_id, owner),
        )
        return cursor.rowcount == 1

    def finish(
        self,
        job_id: str,
        owner: str,
        *,
        error: str | None = None,
        pages_done: int = 0,
        pages_total: int | None = None,
    ) -> bool:
        """Record the outcome; False if the job was cancelled or taken over meanwhile."""
        status = "failed" if error else "done"
        if pages_total is not None:
            pages_done = min(pages_done, pages_total)
        cursor = self.db.execute(
            "UPDATE jobs SET status = ?, error = ?, pages_done = ?, pages_total = ?,"
            " password = NULL, lease_owner = NULL, lease_expires = NULL, updated_at = ?"
            " WHERE id = ? AND lease_owner = ? AND status = 'running'",
            (status, error, pages_done, pages_total, time.time(), job_id, owner),
        )
        return cursor.rowcount == 1

    def release(self, job_id: str, owner: str) -> bool:
        """Give a running job back to the queue (its worker is shutting down): not an attempt."""
        cursor = self.db.execute(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL,"
            " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = ?"
            " WHERE id = ? AND lease_owner = ? AND status = 'running'",
            (time.time(), job_id, owner),
        )
        if cursor.rowcount == 1:
            self.db.notify(CHANNEL)
        return cursor.rowcount == 1

    def wait_for_work(self, timeout: float, stop: threading.Event) -> None:
        """Wait until a job may be waiting: a job queued anywhere (PostgreSQL wakes the
        waiter at once), ``timeout`` seconds at the most (a lease may expire meanwhile), or
        ``stop``."""
        if stop.is_set() or self.db.wait_notice(CHANNEL, timeout):
            return
        stop.wait(timeout)

    def release_all_running(self) -> int:
        """Requeue every running job: for a worker that knows it is the only one (embedded)."""
        cursor = self.db.execute(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL"
            " WHERE status = 'running'"
        )
        return cursor.rowcount

    def count(self, status: JobStatus) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) AS n FROM jobs WHERE status = ?", (status,)
        ).fetchone()
        return int(row["n"]) if row else 0

    def close(self) -> None:
        self.db.close()
