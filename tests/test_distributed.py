"""A deployment over many hosts: API replicas and workers as separate processes, each with a
data directory of its own and no shared folder, on one real PostgreSQL server (the job queue
and the uploaded originals). Each worker writes its pages to its own embedded store (no
Qdrant server runs here): what is under test is the queue and the originals; the shared store
is the server backend's suite."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from indexer.database import PostgresDatabase
from indexer.jobs import JobQueue
from tests.documents import make_pdf
from tests.server import free_port, wait_ready

BUDGET = 64
KEY = "Q0Q1d2NqcGZtdmV6d2JxTnR6a1hqS0VwS0h2b2JvU0o="  # a Fernet key, the same on every host


def _env(tiny_model_dir: Path, data: Path, database_url: str, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")},
        "COLQWEN_MODEL": str(tiny_model_dir),
        "COLQWEN_DEVICE": "cpu",
        "COLQWEN_OCR": "off",
        "COLQWEN_MAX_VISUAL_TOKENS": str(BUDGET),
        "COLQWEN_DATA_DIR": str(data),
        "COLQWEN_DATABASE_URL": database_url,
        "COLQWEN_SECRET_KEY": KEY,
        "COLQWEN_RENDER_WORKERS": "1",
        "COLQWEN_BATCH_SIZE": "2",
        "COLQWEN_QUERY_BATCHING": "false",
        **extra,
    }


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", *command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    process.wait(timeout=60)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _pages_by_store(data_dirs: list[Path]) -> dict[Path, dict[str, int]]:
    """doc_id -> pages stored, in each worker's embedded store (read once they stopped)."""
    from retrieval.store import PageStore
    from retrieval.store.edge import EdgeBackend

    out = {}
    for data in data_dirs:
        store = PageStore(EdgeBackend(data / "qdrant"))
        try:
            found = {}
            if store.has_collection("pages"):
                for doc in store.documents("pages"):
                    found[doc.doc_id] = len(store.stored_page_numbers("pages", doc.doc_id))
            out[data] = found
        finally:
            store.close()
    return out


def _page_count(data: Path) -> int:
    from retrieval.store import PageStore
    from retrieval.store.edge import EdgeBackend

    store = PageStore(EdgeBackend(data / "qdrant"))
    try:
        return store.count_pages("pages")
    finally:
        store.close()


@pytest.mark.slow  # five processes start a model each: a minute on 2 cores
def test_two_api_replicas_and_three_workers_do_every_job_exactly_once(
    tiny_model_dir, tmp_path, database_url
):
    apis, workers = [], []
    try:
        for i in range(2):
            port = free_port()
            env = _env(tiny_model_dir, tmp_path / f"api{i}", database_url)
            api = _start(
                ["serve", "--no-worker", "--port", str(port)], env, tmp_path / f"api{i}.log"
            )
            apis.append((api, f"http://127.0.0.1:{port}"))
        worker_dirs = [tmp_path / f"worker{i}" for i in range(3)]
        for i, data in enumerate(worker_dirs):
            env = _env(tiny_model_dir, data, database_url)
            workers.append(_start(["worker"], env, tmp_path / f"worker{i}.log"))
        for process, base in apis:
            wait_ready(base, process)
        files = {f"d{i}.pdf": make_pdf([(595 + i, 842)] * (1 + i % 3)) for i in range(8)}
        accepted: dict[str, dict] = {}

        def upload(names: list[str], base: str) -> None:  # the two replicas at once
            with httpx.Client(base_url=base, timeout=60) as client:
                for name in names:
                    r = client.post("/v1/documents", files={"file": (name, files[name])})
                    assert r.status_code == 202, r.text
                    accepted[name] = r.json()

        names = sorted(files)
        threads = [
            threading.Thread(target=upload, args=(names[i::2], base))
            for i, (_, base) in enumerate(apis)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(accepted) == len(files)
        queue = JobQueue(PostgresDatabase(database_url))
        try:
            _wait(lambda: queue.count("done") == len(files), 180, "every job done")
            jobs = [queue.get(body["job_id"]) for body in accepted.values()]
            assert {j.status for j in jobs} == {"done"}
            assert all(j.attempts == 1 for j in jobs)  # claimed once each
            with httpx.Client(base_url=apis[1][1]) as client:  # any replica answers for any job
                for body in accepted.values():
                    state = client.get(f"/v1/jobs/{body['job_id']}").json()
                    assert state["status"] == "done" and state["pages_done"] == state["pages_total"]
        finally:
            queue.close()
        for worker in workers:
            _stop(worker)
        stored = _pages_by_store(worker_dirs)
        expected = {body["doc_id"]: 1 + int(name[1:-4]) % 3 for name, body in accepted.items()}
        holders = {doc: [d for d, found in stored.items() if doc in found] for doc in expected}
        assert all(len(h) == 1 for h in holders.values()), holders  # each in one store, once
        for doc, pages in expected.items():
            assert stored[holders[doc][0]][doc] == pages
        assert sum(1 for found in stored.values() if found) >= 2  # the work was shared
    finally:
        for worker in workers:
            _stop(worker, signal.SIGKILL)
        for api, _ in apis:
            _stop(api, signal.SIGKILL)


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_resumed_by_another_and_a_delete_stays_deleted(
    tiny_model_dir, tmp_path, database_url
):
    """A worker killed with SIGKILL mid-job: another worker process (on the same store: a
    store is what a Qdrant server would share) takes the job over once its lease ran out and
    embeds only the pages missing. Then a document deleted by another process while a worker
    ingests it: the worker stops and removes what it stored, and the original is gone."""
    from indexer.documents import DELETED
    from indexer.uploads import UploadFolder
    from indexer.wiring import uploads
    from retrieval.config import Settings

    settings = Settings(
        _env_file=None, data_dir=tmp_path / "client", database_url=database_url, secret_key=KEY
    )
    queue = JobQueue(PostgresDatabase(database_url))
    folder: UploadFolder = uploads(settings, queue)

    def submit(name: str, pdf: bytes) -> tuple[str, str]:
        incoming = folder.incoming(name, 64 << 20)
        incoming.write(pdf)
        upload = incoming.commit()
        job = queue.create(
            doc_id=upload.doc_id, collection="pages", name=name, path=upload.path, metadata={}
        )
        return job.id, upload.doc_id

    pages = 300  # ~75 pages a second here: killed some seconds before the end
    job_id, _ = submit("long.pdf", make_pdf([(595, 842)] * pages))
    data = tmp_path / "worker"
    env = _env(tiny_model_dir, data, database_url, COLQWEN_JOB_LEASE_S="2")
    first = _start(["worker"], env, tmp_path / "first.log")
    second = None
    try:
        _wait(lambda: queue.get(job_id).pages_done > 0, 120, "the first worker's progress")
        time.sleep(1.5)  # pages are made durable about once a second
        _stop(first, signal.SIGKILL)
        stored_before = _page_count(data)  # what the killed worker made durable (its store)
        assert 0 < stored_before < pages
        second = _start(["worker"], env, tmp_path / "second.log")
        _wait(lambda: queue.get(job_id).status == "done", 180, "the job resumed and done")
        job = queue.get(job_id)
        assert job.attempts == 2 and job.pages_done == pages
        log = (tmp_path / "second.log").read_text()
        embedded = int(re.search(rf"job {job_id}: (\d+) of its {pages} pages", log).group(1))
        assert embedded == pages - stored_before  # the missing pages, and only them

        # A delete while the worker ingests: by another process, through the shared queue.
        victim, victim_doc = submit("victim.pdf", make_pdf([(842, 595)] * pages))
        _wait(lambda: queue.get(victim).pages_done > 0, 120, "the victim's ingestion")
        from indexer.wiring import document_service
        from retrieval.store import PageStore

        store = PageStore.from_settings(settings)
        try:
            document_service(settings, store, queue).delete("pages", victim_doc)
        finally:
            store.close()
        assert queue.get(victim).status == "cancelled" and queue.get(victim).error == DELETED
        assert not folder.has(victim_doc)  # the original, gone for every host
        time.sleep(3)  # the worker notices within a heartbeat and cleans up
        _stop(second)
        second = None
        stored = _pages_by_store([data])[data]
        assert victim_doc not in stored  # its record did not come back
        assert list(stored.values()) == [pages] and _page_count(data) == pages  # nor a page
    finally:
        for process in (first, second):
            if process is not None:
                _stop(process, signal.SIGKILL)
        queue.close()
