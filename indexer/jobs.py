"""The durable ingestion queue: a job table in SQLite (WAL mode) under the data directory.

An accepted upload is a row here (and its file in ``uploads/``) before the API answers, so
nothing accepted is lost. Workers claim jobs atomically with a lease and renew it while they
work; a job whose worker died is claimed again once its lease has expired, and resumes where
the pipeline left it (stored pages are not embedded again).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from retrieval.errors import NotFound

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
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
    lease_expires REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
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
    def _from_row(cls, row: sqlite3.Row) -> Job:
        data = {k: row[k] for k in row.keys() if k not in ("lease_owner", "lease_expires")}  # noqa: SIM118 - a Row iterates values
        data["metadata"] = json.loads(data["metadata"])
        return cls(**data)


class JobQueue:
    """Thread-safe; several processes may share the file (SQLite locking)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an accepted job survives power loss
            self._local.db = db
        return db

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
        self._db().execute(
            "INSERT INTO jobs (id, doc_id, collection, name, path, metadata, password, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, doc_id, collection, name, str(path), json.dumps(metadata), password, now, now),
        )
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job '{job_id}' does not exist")
        return Job._from_row(row)

    def active_for(self, doc_id: str, collection: str) -> Job | None:
        """A queued or running job for this document, if any."""
        row = (
            self._db()
            .execute(
                "SELECT * FROM jobs WHERE doc_id = ? AND collection = ?"
                " AND status IN ('queued', 'running')"
                " ORDER BY created_at LIMIT 1",
                (doc_id, collection),
            )
            .fetchone()
        )
        return None if row is None else Job._from_row(row)

    def cancel_for(self, doc_id: str, collection: str, reason: str) -> int:
        """Cancel the queued or running jobs of a document; its worker stops at its next check."""
        cursor = self._db().execute(
            "UPDATE jobs SET status = 'cancelled', error = ?, password = NULL, lease_owner = NULL,"
            " lease_expires = NULL, updated_at = ? WHERE doc_id = ? AND collection = ?"
            " AND status IN ('queued', 'running')",
            (reason, time.time(), doc_id, collection),
        )
        return cursor.rowcount

    def cancelled_last(self, since_s: float = 7 * 86400) -> list[tuple[str, str]]:
        """(doc_id, collection) of recently cancelled jobs that no later job followed."""
        rows = (
            self._db()
            .execute(
                "SELECT doc_id, collection FROM jobs j WHERE status = 'cancelled'"
                " AND updated_at > ? AND NOT EXISTS (SELECT 1 FROM jobs k WHERE"
                " k.doc_id = j.doc_id AND k.collection = j.collection"
                " AND k.created_at > j.created_at)",
                (time.time() - since_s,),
            )
            .fetchall()
        )
        return [(r["doc_id"], r["collection"]) for r in rows]

    def holds(self, job_id: str, owner: str) -> bool:
        """Whether ``owner`` still runs this job (not cancelled, nor taken over)."""
        row = (
            self._db()
            .execute("SELECT status, lease_owner FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        return row is not None and row["status"] == "running" and row["lease_owner"] == owner

    def references(self, doc_id: str) -> bool:
        """Whether a queued or running job of any collection needs this document's upload."""
        row = (
            self._db()
            .execute(
                "SELECT 1 FROM jobs WHERE doc_id = ? AND status IN ('queued', 'running') LIMIT 1",
                (doc_id,),
            )
            .fetchone()
        )
        return row is not None

    def claim(self, owner: str, lease_s: float) -> Job | None:
        """Atomically take the oldest queued job, or a running one whose lease expired."""
        now = time.time()
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'queued'"
                " OR (status = 'running' AND lease_expires < ?) ORDER BY created_at LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', lease_owner = ?, lease_expires = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (owner, now + lease_s, now, row["id"]),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
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
        cursor = self._db().execute(
            "UPDATE jobs SET lease_expires = ?, pages_done = MAX(pages_done, ?),"
            " pages_total = ?, updated_at = ?"
            " WHERE id = ? AND lease_owner = ? AND status = 'running'",
            (now + lease_s, pages_done, pages_total, now, job_id, owner),
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
        cursor = self._db().execute(
            "UPDATE jobs SET status = ?, error = ?, pages_done = ?, pages_total = ?,"
            " password = NULL, lease_owner = NULL, lease_expires = NULL, updated_at = ?"
            " WHERE id = ? AND lease_owner = ? AND status = 'running'",
            (status, error, pages_done, pages_total, time.time(), job_id, owner),
        )
        return cursor.rowcount == 1

    def release(self, job_id: str, owner: str) -> bool:
        """Give a running job back to the queue (its worker is shutting down): not an attempt."""
        cursor = self._db().execute(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL,"
            " attempts = MAX(attempts - 1, 0), updated_at = ?"
            " WHERE id = ? AND lease_owner = ? AND status = 'running'",
            (time.time(), job_id, owner),
        )
        return cursor.rowcount == 1

    def release_all_running(self) -> int:
        """Requeue every running job: for a worker that knows it is the only one (embedded)."""
        cursor = self._db().execute(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL"
            " WHERE status = 'running'"
        )
        return cursor.rowcount

    def count(self, status: JobStatus) -> int:
        return (
            self._db()
            .execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,))
            .fetchone()[0]
        )

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
