"""A real PostgreSQL server for the tests that need one: a throwaway cluster in a temporary
directory, started with Debian's binaries (``apt-get install postgresql``; ``.ci/run`` does),
as the ``postgres`` user when the tests run as root (the server refuses root). Set
``COLQWEN_TEST_DATABASE_URL`` to use a server of your own instead. Each test gets a database
of its own."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

WHY_NOT = (
    "PostgreSQL is not installed (apt-get install postgresql, as .ci/run does), and "
    "COLQWEN_TEST_DATABASE_URL is not set"
)


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def available() -> bool:
    return bool(os.environ.get("COLQWEN_TEST_DATABASE_URL")) or (
        _bin("initdb") is not None and _bin("pg_ctl") is not None
    )


class Server:
    """A cluster of our own, or the one ``COLQWEN_TEST_DATABASE_URL`` names."""

    def __init__(self, *, durable: bool = False) -> None:
        """``durable``: fsync and synchronous commits on, as a deployment runs it (benchmarks);
        off for tests, which need no durability from a throwaway server."""
        self.url = os.environ.get("COLQWEN_TEST_DATABASE_URL") or ""
        self._dir: Path | None = None
        self._durable = durable
        if not self.url:
            self._start()

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def _start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="colqwen-pg-"))
        data = self._dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
        assert initdb and pg_ctl, WHY_NOT
        self._run(initdb, "-D", str(data), "-A", "trust", "-U", "colqwen", "--no-sync")
        options = f"-p {port} -k {self._dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self._durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log = str(self._dir / "log")
        self._run(pg_ctl, "-D", str(data), "-o", options, "-l", log, "-w", "start")
        self.url = f"postgresql://colqwen@127.0.0.1:{port}/postgres"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        if self._dir is None:
            return
        pg_ctl = _bin("pg_ctl")
        assert pg_ctl
        self._run(pg_ctl, "-D", str(self._dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self._dir, ignore_errors=True)
