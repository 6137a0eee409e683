"""Uploaded originals kept in PostgreSQL, where every API replica and worker can read them.

A distributed deployment (``COLQWEN_DATABASE_URL``) has no shared volume: the replica that
accepted an upload is not the worker that ingests it, nor the replica that later draws its
page images. Each original is kept in the database beside the job queue, as rows of 4 MB
chunks (``bytea``) under a header row, written in one transaction: a reader sees the whole
file or none of it, and two replicas accepting the same file at once keep one copy (the
header's primary key is its content hash). Each host keeps a local copy of what it read
(``UploadFolder``), so a file is fetched once per host.

Why the database and not an object store: it is already there, it is transactional with the
queue, it is backed up with it, and uploads are bounded (``COLQWEN_MAX_UPLOAD_MB``, 200 MB by
default). PostgreSQL stores ``bytea`` compressed out of line (TOAST); a deployment that keeps
terabytes of originals is better served by an S3-compatible store (not built here).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from indexer.database import PostgresDatabase

CHUNK_BYTES = 4 << 20
_SCHEMA = """
CREATE TABLE IF NOT EXISTS originals (
    doc_id TEXT PRIMARY KEY,
    suffix TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS original_chunks (
    doc_id TEXT NOT NULL REFERENCES originals (doc_id) ON DELETE CASCADE,
    chunk INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (doc_id, chunk)
)
"""


class PostgresOriginals:
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        db.script(_SCHEMA)

    def put(self, doc_id: str, path: Path) -> None:
        """Keep the file at ``path`` as ``doc_id``'s original (its suffix too); nothing if it
        is kept already."""
        with self.db.connection() as conn, conn.transaction():
            inserted = conn.execute(
                "INSERT INTO originals (doc_id, suffix, size, created_at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (doc_id) DO NOTHING",
                (doc_id, path.suffix, path.stat().st_size, time.time()),
            ).rowcount
            if not inserted:
                return
            with open(path, "rb") as f:
                for chunk, data in enumerate(iter(lambda: f.read(CHUNK_BYTES), b"")):
                    conn.execute(
                        "INSERT INTO original_chunks (doc_id, chunk, data) VALUES (%s, %s, %s)",
                        (doc_id, chunk, data),
                    )

    def has(self, doc_id: str) -> bool:
        sql = "SELECT 1 FROM originals WHERE doc_id = ?"
        return self.db.execute(sql, (doc_id,)).fetchone() is not None

    def fetch(self, doc_id: str, folder: Path) -> Path | None:
        """``doc_id``'s original written into ``folder`` (as ``<doc_id><suffix>``, atomically),
        or None if it is not kept."""
        with self.db.connection() as conn, conn.transaction():
            header = conn.execute(
                "SELECT suffix FROM originals WHERE doc_id = %s", (doc_id,)
            ).fetchone()
            if header is None:
                return None
            target = folder / f"{doc_id}{header['suffix']}"
            part = folder / f".{doc_id}.{uuid.uuid4().hex}.part"
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    cursor = conn.cursor(name=f"fetch_{uuid.uuid4().hex}")  # streamed rows
                    cursor.execute(
                        "SELECT data FROM original_chunks WHERE doc_id = %s ORDER BY chunk",
                        (doc_id,),
                    )
                    for row in cursor:
                        out.write(row["data"])
                    cursor.close()
                os.replace(part, target)
            finally:
                part.unlink(missing_ok=True)
        return target

    def remove(self, doc_id: str) -> bool:
        return self.db.execute("DELETE FROM originals WHERE doc_id = ?", (doc_id,)).rowcount > 0

    def doc_ids(self) -> list[str]:
        rows = self.db.execute("SELECT doc_id FROM originals ORDER BY doc_id").fetchall()
        return [r["doc_id"] for r in rows]
