"""Crashes at any moment lose and duplicate nothing: the recovery a start runs, and (slow) kill -9
of `colqwen serve` at random moments of a three-document ingest with a delete in flight."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from indexer.documents import DocumentService
from indexer.jobs import JobQueue
from indexer.secrets import Sealer
from indexer.uploads import UploadFolder
from retrieval.config import Settings
from retrieval.store import PageStore
from retrieval.store.edge import EdgeBackend
from retrieval.types import DocumentRecord
from tests.documents import make_pdf
from tests.fakes import page_embedding, page_record
from tests.server import free_port, wait_ready
from tests.test_api import BUDGET
from tests.test_processes import process_group, wait_gone


def test_a_start_finishes_what_a_killed_process_left(tmp_path):
    store = PageStore(EdgeBackend(tmp_path / "qdrant"))
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    uploads = UploadFolder(tmp_path / "uploads")
    service = DocumentService(
        store, jobs, uploads, Sealer.from_settings(Settings(data_dir=tmp_path))
    )
    store.create_collection("c", model="m", max_visual_tokens=64)
    rng = np.random.default_rng(0)

    def stored(doc_id: str, status: str) -> None:
        store.put_document("c", DocumentRecord(doc_id, f"{doc_id}.pdf", 2, status=status))
        store.upsert_pages("c", [page_record(doc_id, p, page_embedding(rng)) for p in (1, 2)])

    def kept(doc_id: str) -> Path:
        incoming = uploads.incoming(f"{doc_id}.pdf", 1 << 20)
        incoming.write(make_pdf([(100, 100 + len(doc_id))]))
        upload = incoming.commit()
        return upload.path

    stored("half-deleted", "deleting")  # killed during a delete
    stored("cancelled", "indexing")  # its job was cancelled, its worker killed before cleaning up
    job = jobs.create(doc_id="cancelled", collection="c", name="x", path=Path("x"), metadata={})
    jobs.cancel_for("cancelled", "c", "deleted")
    stored("kept", "indexed")
    # Deleted (its record gone) while its job still ran; the pipeline stored two more pages
    # before its worker, killed, could clean up after it.
    stored("late", "indexing")
    late = jobs.create(doc_id="late", collection="c", name="l", path=Path("l"), metadata={})
    jobs.cancel_for("late", "c", "deleted")
    store.delete_document("c", "late")
    store.upsert_pages("c", [page_record("late", p, page_embedding(rng)) for p in (3, 4)])
    orphan = kept("orphan")  # killed between storing an upload and queueing its job
    queued = kept("queued")
    jobs.create(doc_id=queued.stem, collection="c", name="q", path=queued, metadata={})

    service.recover(sweep_uploads=True)

    assert [d.doc_id for d in store.documents("c")] == ["kept"]
    assert store.count_pages("c") == 2
    assert not orphan.exists() and queued.exists()
    assert jobs.get(job.id).status == "cancelled"
    assert jobs.get(late.id).status == "cancelled"
    assert store.stored_page_numbers("c", "late") == set()  # no orphan of a deleted document
    store.close()


# --- kill -9 at random moments (slow) ------------------------------------------------------------

DOCS = {"a.pdf": 14, "b.pdf": 18, "c.pdf": 22}


def serve(env: dict[str, str], port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(10))
def test_kill_9_at_a_random_moment_loses_and_duplicates_nothing(tiny_model_dir, tmp_path, trial):
    rng = random.Random(trial)
    data = tmp_path / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")},
        "COLQWEN_MODEL": str(tiny_model_dir),
        "COLQWEN_DEVICE": "cpu",
        "COLQWEN_OCR": "off",
        "COLQWEN_MAX_VISUAL_TOKENS": str(BUDGET),
        "COLQWEN_DATA_DIR": str(data),
        "COLQWEN_RENDER_WORKERS": "1",
        "COLQWEN_BATCH_SIZE": "2",
        "COLQWEN_JOB_LEASE_S": "1.5",
    }
    files = {name: make_pdf([(595, 842)] * pages) for name, pages in DOCS.items()}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve(env, port)
    wait_ready(base, server)
    accepted: dict[str, dict] = {}  # name -> the 202 body
    deleted: set[str] = set()  # doc ids whose DELETE answered 204
    victim = rng.choice(sorted(DOCS))

    def client_work() -> None:
        try:
            with httpx.Client(base_url=base, timeout=30) as api:
                for name, data_ in files.items():
                    r = api.post("/v1/documents", files={"file": (name, data_)})
                    if r.status_code == 202:
                        accepted[name] = r.json()
                    time.sleep(rng.uniform(0, 0.5))
                time.sleep(rng.uniform(0, 2))
                if victim in accepted:
                    doc_id = accepted[victim]["doc_id"]
                    if api.delete(f"/v1/documents/{doc_id}").status_code == 204:
                        deleted.add(doc_id)
        except httpx.HTTPError:
            pass  # the server was killed under us

    worker = threading.Thread(target=client_work, daemon=True)
    worker.start()
    time.sleep(rng.uniform(0.2, 5.0))
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    worker.join(timeout=60)
    assert wait_gone(server.pid) == [], "render workers outlived the killed server"

    server = serve(env, port)
    try:
        wait_ready(base, server)
        with httpx.Client(base_url=base, timeout=30) as api:
            for name, body in accepted.items():
                deadline = time.monotonic() + 240
                while (job := api.get(f"/v1/jobs/{body['job_id']}").json())["status"] in (
                    "queued",
                    "running",
                ):
                    assert time.monotonic() < deadline, job
                    time.sleep(0.1)
                doc = api.get(f"/v1/documents/{body['doc_id']}")
                if body["doc_id"] in deleted:
                    assert job["status"] == "cancelled" or doc.status_code == 404, job
                    assert doc.status_code == 404, (name, doc.text)
                elif doc.status_code == 200:  # a DELETE cut short may have done its work or not
                    assert job["status"] == "done", (name, job)
                    assert (
                        doc.json()["status"] == "indexed"
                        and doc.json()["page_count"] == (DOCS[name])
                    )
                else:
                    assert name == victim and job["status"] == "cancelled", f"{name}: {job}"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert wait_gone(server.pid) == []

    store = PageStore.from_settings(Settings(_env_file=None, data_dir=data))
    try:
        indexed = {d.doc_id: d for d in store.documents("pages")} if accepted else {}
        assert all(d.status == "indexed" for d in indexed.values()), indexed
        for doc in indexed.values():  # exact pages, no duplicate
            assert sorted(store.stored_page_numbers("pages", doc.doc_id)) == list(
                range(1, doc.page_count + 1)
            )
        total = store.count_pages("pages") if accepted else 0
        assert total == sum(d.page_count for d in indexed.values())  # no orphan point
    finally:
        store.close()
    uploads = data / "uploads"
    assert not list(uploads.rglob("*.part")), "temporary files left behind"
    kept = {p.stem for p in uploads.glob("*.pdf")}
    assert kept == set(indexed), (kept, set(indexed))
    assert not process_group(server.pid)
