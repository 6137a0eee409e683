"""The database the service tier keeps its state in: SQLite (embedded, one host) or PostgreSQL
(``COLQWEN_DATABASE_URL``: any number of API replicas and workers, on any hosts).

The job queue writes its SQL once, in the dialect both share (``?`` parameters, no
engine-specific functions), and asks the database only for what differs: how a transaction
that claims a row begins, and how the claimed row is locked. SQLite takes the whole database
for the transaction (``BEGIN IMMEDIATE``: claims happen one at a time); PostgreSQL locks the
row it selects and lets concurrent claims skip it (``FOR UPDATE SKIP LOCKED``), so workers
never wait for each other nor take the same job.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from retrieval.errors import ConfigurationError, StoreError

Row = dict[str, Any]


class Result(Protocol):
    rowcount: int

    def fetchone(self) -> Row | None: ...

    def fetchall(self) -> list[Row]: ...


class Database(Protocol):
    kind: str  # "sqlite" or "postgres"
    # Appended to the SELECT that picks a row to claim, inside ``claiming``.
    lock_clause: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement in a transaction of its own (durable on return)."""

    def script(self, sql: str) -> None:
        """Run several statements (a schema), separated by semicolons."""

    @contextmanager
    def claiming(self) -> Iterator[Database]:
        """A transaction for a read-then-update; ``execute`` inside it runs in it."""

    def notify(self, channel: str) -> None:
        """Wake whoever ``wait_notice``s on ``channel`` (in any process, on any host)."""

    def wait_notice(self, channel: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a ``notify`` on ``channel``; False when the
        database cannot tell (the caller then polls)."""

    def close(self) -> None: ...


class _Rows:
    """A cursor's rows as dicts, read at once (the connection is free again on return)."""

    def __init__(self, rowcount: int, rows: list[Row]) -> None:
        self.rowcount = rowcount
        self._rows = rows

    def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Row]:
        return list(self._rows)


class SqliteDatabase:
    """A SQLite file (WAL mode, synchronous: an accepted job survives power loss); a connection
    per thread. Several processes of one host may share it."""

    kind = "sqlite"
    lock_clause = ""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cursor = self._db().execute(sql, tuple(params))
        rows = [dict(r) for r in cursor.fetchall()] if cursor.description else []
        return _Rows(cursor.rowcount, rows)

    def script(self, sql: str) -> None:
        self._db().executescript(sql)

    @contextmanager
    def claiming(self) -> Iterator[SqliteDatabase]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def notify(self, channel: str) -> None:
        """Nothing to do: SQLite's readers poll."""

    def wait_notice(self, channel: str, timeout: float) -> bool:
        return False

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class PostgresDatabase:
    """A PostgreSQL database through a pool of psycopg 3 connections (autocommit: each
    statement is its own transaction unless inside ``claiming``), shared by this process's
    threads."""

    kind = "postgres"
    lock_clause = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, *, max_size: int = 8) -> None:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.url = url
        self._psycopg = psycopg
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
            name="colqwen",
        )
        try:
            self._pool.open(wait=True, timeout=15)
        except Exception as exc:
            self._pool.close()
            raise ConfigurationError(
                f"cannot reach the database at {redact(url)}: {exc}; check COLQWEN_DATABASE_URL"
            ) from None
        self._claim = threading.local()  # the connection of a claim in progress, per thread
        self._listeners: dict[str, Any] = {}  # channel -> a connection of its own, LISTENing
        self._listen_lock = threading.Lock()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        conn = getattr(self._claim, "conn", None)
        if conn is not None:
            return self._run(conn, sql, params)
        try:
            with self._pool.connection() as conn:
                return self._run(conn, sql, params)
        except self._psycopg.OperationalError as exc:
            raise StoreError(f"the database at {redact(self.url)}: {exc}") from exc

    def _run(self, conn: Any, sql: str, params: Sequence[Any]) -> Result:
        cursor = conn.execute(_placeholders(sql), tuple(params))
        rows = list(cursor.fetchall()) if cursor.description else []
        return _Rows(cursor.rowcount, rows)

    def script(self, sql: str) -> None:
        with self._pool.connection() as conn, conn.transaction():
            for statement in filter(str.strip, sql.split(";")):
                conn.execute(statement)

    @contextmanager
    def claiming(self) -> Iterator[PostgresDatabase]:
        with self._pool.connection() as conn, conn.transaction():
            self._claim.conn = conn
            try:
                yield self
            finally:
                self._claim.conn = None

    def notify(self, channel: str) -> None:
        self.execute("SELECT pg_notify(?, '')", (channel,))

    def wait_notice(self, channel: str, timeout: float) -> bool:
        """PostgreSQL's LISTEN, on a connection of its own (outside the pool): a job queued
        on any host wakes an idle worker at once instead of at its next poll."""
        with self._listen_lock:
            listener = self._listeners.get(channel)
            if listener is None:
                listener = self._psycopg.connect(self.url, autocommit=True)
                listener.execute(f'LISTEN "{channel}"')
                self._listeners[channel] = listener
        try:
            for _ in listener.notifies(timeout=timeout, stop_after=1):
                break
        except self._psycopg.OperationalError:
            with self._listen_lock:
                self._listeners.pop(channel, None)
            listener.close()
            return False
        return True

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A pooled connection of its own (the originals' chunked reads and writes)."""
        with self._pool.connection() as conn:
            yield conn

    def close(self) -> None:
        with self._listen_lock:
            listeners, self._listeners = list(self._listeners.values()), {}
        for listener in listeners:
            listener.close()
        self._pool.close()


def _placeholders(sql: str) -> str:
    """Our ``?`` parameters as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
