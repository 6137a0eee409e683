"""The job queue's promises, on both of its databases (SQLite embedded, a real PostgreSQL
server): every job claimed by one worker at a time, leases, progress, cancellation; and the
originals kept where every host reads them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from indexer.database import PostgresDatabase, SqliteDatabase
from indexer.jobs import JobQueue


@pytest.fixture(params=["sqlite", "postgres"])
def open_queue(request, tmp_path):
    """Opens queues on one database, as separate processes would (each its own connections)."""
    url = None if request.param == "sqlite" else request.getfixturevalue("database_url")
    opened: list[JobQueue] = []

    def make() -> JobQueue:
        db = PostgresDatabase(url) if url else SqliteDatabase(tmp_path / "jobs.sqlite3")
        opened.append(JobQueue(db))
        return opened[-1]

    yield make
    for queue in opened:
        queue.close()


def _jobs(queue: JobQueue, n: int) -> list[str]:
    return [
        queue.create(
            doc_id=f"{i:064x}", collection="c", name=f"{i}.pdf", path=Path("/x"), metadata={}
        ).id
        for i in range(n)
    ]


def test_concurrent_workers_each_claim_a_job_exactly_once(open_queue):
    queue = open_queue()
    created = set(_jobs(queue, 120))
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        own = open_queue()  # its own connections, as another process would have
        while (job := own.claim(name, lease_s=60)) is not None:
            with lock:
                claimed.append(job.id)
            assert own.finish(job.id, name, pages_done=1, pages_total=1)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(created)  # each once: no job lost, none twice
    assert queue.count("done") == len(created) and queue.count("queued") == 0


def test_a_job_whose_lease_expires_is_taken_over_and_its_first_worker_told(open_queue):
    first, second = open_queue(), open_queue()
    [job_id] = _jobs(first, 1)
    assert first.claim("a", lease_s=0.2).id == job_id
    assert second.claim("b", lease_s=60) is None  # leased
    time.sleep(0.3)
    taken = second.claim("b", lease_s=60)
    assert taken.id == job_id and taken.attempts == 2
    assert not first.holds(job_id, "a") and not first.renew(job_id, "a", 60, 1, 2)
    assert not first.finish(job_id, "a")  # its outcome no longer counts
    assert second.finish(job_id, "b", pages_done=2, pages_total=2)
    assert second.get(job_id).status == "done"


def test_progress_never_goes_back_nor_past_the_total(open_queue):
    queue = open_queue()
    [job_id] = _jobs(queue, 1)
    queue.claim("a", lease_s=60)
    assert queue.renew(job_id, "a", 60, 7, 10)
    assert queue.renew(job_id, "a", 60, 3, 10)  # a resumed attempt counts from what is stored
    assert queue.get(job_id).pages_done == 7
    assert queue.renew(job_id, "a", 60, 50, 10)
    assert queue.get(job_id).pages_done == 10


def test_cancelled_and_released_jobs(open_queue):
    queue = open_queue()
    first, second = _jobs(queue, 2)
    assert queue.claim("a", lease_s=60).id == first
    assert queue.cancel_for(f"{0:064x}", "c", "deleted") == 1
    assert not queue.holds(first, "a") and queue.get(first).status == "cancelled"
    assert queue.cancelled_last() == [(f"{0:064x}", "c")]
    assert queue.claim("b", lease_s=60).id == second
    assert queue.release(second, "b")  # shutting down: back in the queue, not an attempt
    again = queue.claim("c", lease_s=60)
    assert again.id == second and again.attempts == 1
    public = again.public()
    assert public["job_id"] == second and "path" not in public and "password" not in public


def test_an_idle_worker_is_woken_by_a_job_queued_on_another_host(database_url):
    """PostgreSQL's LISTEN/NOTIFY: a worker waiting for work claims a job queued elsewhere
    within milliseconds, not at its next poll."""
    waiting, api = (
        JobQueue(PostgresDatabase(database_url)),
        JobQueue(PostgresDatabase(database_url)),
    )
    try:
        stop = threading.Event()
        waiting.wait_for_work(0.01, stop)  # listening from here on
        woke = []

        def wait() -> None:
            start = time.monotonic()
            waiting.wait_for_work(5.0, stop)
            woke.append(time.monotonic() - start)

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.3)
        _jobs(api, 1)
        thread.join(timeout=10)
        assert woke and 0.25 < woke[0] < 1.0  # woken by the job, not by the 5 s timeout
        assert waiting.claim("w", 60) is not None
    finally:
        waiting.close()
        api.close()


def test_originals_are_read_by_every_host_and_removed_for_all(database_url, tmp_path):
    """Two hosts, each with a folder of its own, one database: what one accepted the other
    reads; what one removes is gone for both."""
    from indexer.originals import PostgresOriginals
    from indexer.uploads import UploadFolder
    from tests.documents import make_pdf

    db = PostgresDatabase(database_url)
    try:
        shared = PostgresOriginals(db)
        api = UploadFolder(tmp_path / "api" / "uploads", shared=shared)
        worker = UploadFolder(tmp_path / "worker" / "uploads", shared=shared)
        pdf = make_pdf([(595, 842)] * 3) + b"x" * (9 << 20)  # three chunks
        incoming = api.incoming("a.pdf", 64 << 20)
        for start in range(0, len(pdf), 1 << 20):
            incoming.write(pdf[start : start + (1 << 20)])
        upload = incoming.commit()
        assert worker.holds(upload.path) and worker.has(upload.doc_id)
        fetched = worker.path_of(upload.doc_id)
        assert fetched is not None and fetched.read_bytes() == pdf
        assert fetched.parent == worker.root and fetched.stat().st_mode & 0o077 == 0
        assert worker.doc_ids() == [upload.doc_id]
        assert worker.remove(upload.doc_id)
        assert not api.has(upload.doc_id)
        assert api.prune_copies() == 1 and not upload.path.exists()  # its stale copy, at start
        assert api.path_of(upload.doc_id) is None
    finally:
        db.close()


def test_a_distributed_deployment_needs_the_sealing_key(tmp_path):
    from indexer.secrets import Sealer
    from retrieval.config import Settings
    from retrieval.errors import ConfigurationError

    settings = Settings(
        _env_file=None, data_dir=tmp_path, database_url="postgresql://h/db", secret_key=None
    )
    with pytest.raises(ConfigurationError, match="COLQWEN_SECRET_KEY"):
        Sealer.from_settings(settings)
    assert not (tmp_path / "secret.key").exists()  # no host-local key made


def test_an_embedded_deployment_moves_its_queue_and_originals_to_the_database(
    database_url, tmp_path, monkeypatch
):
    """``colqwen jobs migrate``: queued jobs (with an encrypted PDF's password, sealed again
    with the distributed key) and every kept original go into the database; the old table no
    longer holds them; running it again moves nothing twice."""
    from typer.testing import CliRunner

    from app.cli import app
    from indexer.originals import PostgresOriginals
    from indexer.secrets import Sealer, _key_file
    from indexer.uploads import UploadFolder
    from tests.documents import make_pdf

    old = tmp_path / "old"
    old_queue = JobQueue(SqliteDatabase(old / "jobs.sqlite3"))
    old_sealer = Sealer(_key_file(old / "secret.key"))  # the embedded default: a key file
    folder = UploadFolder(old / "uploads")
    kept = []
    for i, pdf in enumerate([make_pdf([(595, 842)]), make_pdf([(842, 595)] * 2)]):
        incoming = folder.incoming(f"{i}.pdf", 1 << 20)
        incoming.write(pdf)
        kept.append(incoming.commit())
    queued = old_queue.create(
        doc_id=kept[0].doc_id,
        collection="pages",
        name="0.pdf",
        path=kept[0].path,
        metadata={"team": "a"},
        password=old_sealer.seal("hunter2"),
    )
    done = old_queue.create(
        doc_id=kept[1].doc_id, collection="pages", name="1.pdf", path=kept[1].path, metadata={}
    )
    old_queue.claim("w", 60)  # the first, oldest
    old_queue.claim("w", 60)
    old_queue.finish(done.id, "w", pages_done=2, pages_total=2)
    old_queue.close()

    key = "Q0Q1d2NqcGZtdmV6d2JxTnR6a1hqS0VwS0h2b2JvU0o="
    monkeypatch.setenv("COLQWEN_DATABASE_URL", database_url)
    monkeypatch.setenv("COLQWEN_SECRET_KEY", key)
    monkeypatch.setenv("COLQWEN_DATA_DIR", str(tmp_path / "new"))
    runner = CliRunner()
    result = runner.invoke(app, ["jobs", "migrate", "--from", str(old)])
    assert result.exit_code == 0, result.output
    assert "moved 1 queued jobs" in result.output and "2 originals" in result.output

    db = PostgresDatabase(database_url)
    try:
        new = JobQueue(db)
        [job] = [new.get(r["id"]) for r in db.execute("SELECT id FROM jobs").fetchall()]
        assert (job.doc_id, job.status, job.metadata) == (queued.doc_id, "queued", {"team": "a"})
        assert Sealer(key.encode()).unseal(job.password) == "hunter2"
        elsewhere = UploadFolder(tmp_path / "host2" / "uploads", shared=PostgresOriginals(db))
        assert elsewhere.holds(job.path)  # the old host's path names a kept original
        assert elsewhere.path_of(job.doc_id).read_bytes() == kept[0].path.read_bytes()
        assert sorted(elsewhere.doc_ids()) == sorted(k.doc_id for k in kept)
        again = runner.invoke(app, ["jobs", "migrate", "--from", str(old)])
        assert "moved 0 queued jobs" in again.output
        assert new.count("queued") == 1
    finally:
        db.close()
    left = JobQueue(SqliteDatabase(old / "jobs.sqlite3"))
    assert left.count("queued") + left.count("running") == 0 and left.count("done") == 1
    left.close()
