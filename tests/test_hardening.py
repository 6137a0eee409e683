"""Regression tests of the defects a hostile client and a crashing machine found (issue 13):
each one failed before its fix. The real app over real HTTP, the tiny model, the embedded store."""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import stat
import tempfile
import time

import httpx
import pytest

from app.main import create_app
from tests.conftest import shared_pdfs
from tests.documents import make_pdf
from tests.server import serving, wait_job
from tests.test_api import settings_for, upload


@pytest.fixture
def idle_api(tiny_model_dir, tmp_path, encoder):
    """The API without a worker: uploads stay queued."""
    settings = settings_for(tiny_model_dir, tmp_path / "data", max_upload_mb=1)
    app = create_app(settings, run_worker=False, encoder=encoder)
    with serving(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        client.app = app
        yield client


@pytest.fixture
def api(tiny_model_dir, tmp_path, encoder):
    """The API with its worker; leases short enough to see progress and cancellations soon."""
    settings = settings_for(tiny_model_dir, tmp_path / "data", job_lease_s=1.5, batch_size=2)
    app = create_app(settings, encoder=encoder)
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        client.app = app
        yield client


def assert_error_shape(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "request_id"} and body["detail"], body
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


# --- 1. filters: out-of-range numbers and wrong types are 422, not 500 or a silent miss ----------

BAD_FILTERS = [
    '{"page": 1000000000000000000000000000000}',
    '{"page": {"gte": 1e400}}',
    '{"metadata": {"year": 9223372036854775808}}',
    '{"doc_id": [18446744073709551616]}',
    '{"page": "x"}',
    '{"page": true}',
    '{"page": {"gte": NaN}}',
    '{"page": {"lt": -Infinity}}',
    '{"doc_id": 7}',
    '{"source": {"gte": 1}}',
    '{"page": [1, "2"]}',
]


@pytest.mark.parametrize("spec", BAD_FILTERS)
def test_filters_with_bad_numbers_or_types_are_422(idle_api, spec):
    body = '{"query": "q", "filter": ' + spec + "}"
    r = idle_api.post("/v1/search", content=body, headers={"content-type": "application/json"})
    assert_error_shape(r, 422)
    assert_error_shape(idle_api.get("/v1/documents", params={"filter": spec}), 422)


# --- 3. a document deleted while it is ingested stays deleted ------------------------------------


def test_delete_during_ingestion_stays_deleted(api, tmp_path):
    data = make_pdf([(595, 842)] * 40)
    accepted = upload(api, "long.pdf", data).json()
    doc_id, job_id = accepted["doc_id"], accepted["job_id"]
    deadline = time.monotonic() + 120
    while api.get(f"/v1/documents/{doc_id}").status_code != 200:  # the job is storing pages
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert api.delete(f"/v1/documents/{doc_id}").status_code == 204
    job = wait_job(api, job_id, statuses=("done", "failed", "cancelled"))
    assert job["status"] == "cancelled", job
    time.sleep(3 * 1.5)  # past the lease: nothing retries it
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert_error_shape(api.get(f"/v1/documents/{doc_id}"), 404)
    store = api.app.state.services.store
    assert store.count_pages("pages") == 0
    assert not list((tmp_path / "data" / "uploads").glob(f"{doc_id}.*"))
    # The same file uploaded again is ingested anew, completely.
    again = upload(api, "long.pdf", data).json()
    assert wait_job(api, again["job_id"])["status"] == "done"
    assert api.get(f"/v1/documents/{doc_id}").json()["status"] == "indexed"
    assert store.count_pages("pages") == 40


def test_delete_of_a_queued_upload_cancels_it(idle_api, tmp_path):
    accepted = upload(idle_api, "a.pdf", make_pdf([(595, 842)] * 2)).json()
    assert idle_api.delete(f"/v1/documents/{accepted['doc_id']}").status_code == 204
    job = idle_api.get(f"/v1/jobs/{accepted['job_id']}").json()
    assert job["status"] == "cancelled" and "deleted" in job["error"]
    assert not list((tmp_path / "data" / "uploads").glob("*.pdf"))
    assert_error_shape(idle_api.delete(f"/v1/documents/{accepted['doc_id']}"), 404)


# --- 4. page images of encrypted PDFs, with no plain-text password at rest -----------------------


def test_page_images_of_an_encrypted_pdf_and_no_password_at_rest(api, tmp_path):
    path = shared_pdfs("bad") / "encrypted-libreoffice.pdf"
    r = upload(api, "secret.pdf", path.read_bytes(), password="openpassword")
    job = wait_job(api, r.json()["job_id"])
    assert job["status"] == "done", job
    hits = api.post("/v1/search", json={"query": "x", "filter": {"doc_id": job["doc_id"]}}).json()
    image = api.get(hits["hits"][0]["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    document = api.get(f"/v1/documents/{job['doc_id']}").json()
    assert "password" not in json.dumps(document)
    for f in (tmp_path / "data").rglob("*"):
        if f.is_file():
            assert b"openpassword" not in f.read_bytes(), f


# --- 5. the upload limit holds before the body is read; temporary files stay in the data dir -----


def raw_request(base: str, head: bytes, body_chunks=(), *, chunk_pause: float = 0.0):
    """Send ``head`` then body chunks until the server answers; (status, bytes sent, seconds)."""
    host, port = base.removeprefix("http://").split(":")
    sent, start = 0, time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered already
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            time.sleep(chunk_pause)
        answer = sock.recv(4096)
    return int(answer.split(b" ", 2)[1]), sent, time.monotonic() - start


def test_upload_limit_is_enforced_before_the_body_arrives(idle_api, tmp_path):
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    base = str(idle_api.base_url).rstrip("/")
    declared = (
        b"POST /v1/documents HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    status, _, seconds = raw_request(base, declared)
    assert status == 413 and seconds < 2  # answered on the header, no body sent

    def chunked():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.pdf"\r\n\r\n'
        yield b"%PDF-1.4\n"
        for _ in range(800):  # 50 MB if nobody stops it
            yield b"0" * 65536

    head = (
        b"POST /v1/documents HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    frames = (b"%x\r\n%s\r\n" % (len(c), c) for c in chunked())
    status, sent, _ = raw_request(base, head, frames, chunk_pause=0.001)
    assert status == 413 and sent < 4 * 2**20, sent  # stopped near the 1 MB limit
    uploads = tmp_path / "data" / "uploads"
    assert not list(uploads.rglob("*.part")) and not list(uploads.glob("*.pdf"))
    assert set(os.listdir(tempfile.gettempdir())) <= tmp_before


# --- 7. originals: removed with their document or their failure, private on disk ----------------


def test_originals_are_private_and_removed_when_unreferenced(api, tmp_path):
    uploads = tmp_path / "data" / "uploads"
    ok = upload(api, "ok.pdf", make_pdf([(595, 842)] * 2)).json()
    assert wait_job(api, ok["job_id"])["status"] == "done"
    [kept] = uploads.glob("*.pdf")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    bad = upload(api, "broken.pdf", b"%PDF-1.4\nthis is not really a PDF").json()
    assert wait_job(api, bad["job_id"])["status"] == "failed"
    # The worker removes a failed job's original just after it records the failure.
    deadline = time.monotonic() + 10
    while list(uploads.glob("*.pdf")) != [kept] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(uploads.glob("*.pdf")) == [kept]  # the failed one's original is gone
    assert_error_shape(upload(api, "notes.txt", b"plain text"), 415)
    assert list(uploads.glob("*.pdf")) == [kept] and not list(uploads.rglob("*.part"))
    assert api.delete(f"/v1/documents/{ok['doc_id']}").status_code == 204
    assert not list(uploads.glob("*.pdf"))


# --- 8. every error is JSON with a request id; OPTIONS and 405 name the right methods ------------


def test_framework_errors_are_json_with_a_request_id(idle_api):
    assert_error_shape(idle_api.get("/nope"), 404)
    r = idle_api.put("/v1/search", json={})
    assert_error_shape(r, 405)
    assert r.headers["allow"] == "OPTIONS, POST"
    r = idle_api.post("/v1/documents/abc")
    assert_error_shape(r, 405)
    assert r.headers["allow"] == "DELETE, GET, HEAD, OPTIONS"
    options = idle_api.options("/v1/documents/abc")
    assert options.status_code == 204 and options.headers["allow"] == "DELETE, GET, HEAD, OPTIONS"
    assert idle_api.options("/v1/documents").headers["allow"] == "GET, HEAD, OPTIONS, POST"
    assert_error_shape(idle_api.options("/nope"), 404)
    garbage = idle_api.post(
        "/v1/documents",
        content=b"--b\r\nnot a header line\r\n\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert_error_shape(garbage, 422)
    no_boundary = idle_api.post(
        "/v1/documents", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert_error_shape(no_boundary, 415)
    for body in (b"{broken", b"[1, 2", b'{"query": "q", "top_k": NaN}'):
        sent = idle_api.post(
            "/v1/search", content=body, headers={"content-type": "application/json"}
        )
        assert_error_shape(sent, 422)
    r = idle_api.get("/v1/documents", headers={"X-Request-ID": "client-chose-this"})
    assert assert_error_shape(r, 404)["request_id"] == "client-chose-this"


def test_an_unexpected_error_is_a_json_500_logged_with_its_request_id(
    idle_api, monkeypatch, caplog
):
    def broken(*args, **kwargs):
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(idle_api.app.state.services.store, "documents", broken)
    with caplog.at_level(logging.ERROR):
        r = idle_api.get("/v1/documents")
    body = assert_error_shape(r, 500)
    assert "fire" not in body["detail"] and body["request_id"] in body["detail"]
    logged = [rec for rec in caplog.records if body["request_id"] in rec.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log, not the body
