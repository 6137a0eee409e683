"""Regression tests of the defects an attacker found (issue 30): each failed before its fix.
The real app over real HTTP (and raw sockets where a client misbehaves), the tiny model."""

from __future__ import annotations

import logging
import re
import socket
import time

import httpx
import pytest

from app.main import create_app
from tests.documents import make_pdf
from tests.server import serving
from tests.test_api import settings_for
from tests.test_hardening import assert_error_shape


@pytest.fixture
def idle_api(tiny_model_dir, tmp_path, encoder):
    """The API without a worker (uploads stay queued); body timeouts short enough to test."""
    settings = settings_for(
        tiny_model_dir, tmp_path / "data", upload_idle_s=1.0, upload_min_kb_s=50.0
    )
    app = create_app(settings, run_worker=False, encoder=encoder)
    with serving(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        client.app = app
        yield client


def raw(base: str, head: bytes, body_parts: list[bytes], pause_s: float = 0.0) -> bytes:
    """Send a request over a socket, its body in parts ``pause_s`` apart; the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        try:
            for part in body_parts:
                s.sendall(part)
                time.sleep(pause_s)
        except OSError:
            pass  # the server may answer and close before the body ends
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def multipart(boundary: str, pdf: bytes, **fields: str) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.pdf"\r\n'
        "Content-Type: application/pdf\r\n\r\n".encode()
        + pdf
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts)


def test_a_multipart_boundary_over_70_bytes_is_a_4xx_not_a_500(idle_api):
    boundary = "b" * 300
    body = multipart(boundary, make_pdf([(595, 842)]))
    response = idle_api.post(
        "/v1/documents",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "boundary" in assert_error_shape(response, 422)["detail"]


def test_a_client_that_hangs_up_mid_upload_is_a_499_logged_once_at_info(idle_api, caplog):
    base = str(idle_api.base_url)
    body = multipart("xyz", make_pdf([(595, 842)] * 3))
    head = (
        "POST /v1/documents HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        f"boundary=xyz\r\nContent-Length: {len(body) + 1000}\r\n\r\n"
    ).encode()
    host, port = base.removeprefix("http://").split(":")
    caplog.set_level(logging.INFO)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(head + body[: len(body) // 2])
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "499" not in caplog.text:
        time.sleep(0.1)
    lines = [r for r in caplog.records if "/v1/documents" in r.getMessage()]
    assert [r.levelname for r in lines] == ["INFO"] and "-> 499" in lines[0].getMessage()
    assert "Traceback" not in caplog.text
    metrics = idle_api.get("/metrics").text
    assert re.search(r'colqwen_http_requests_total\{[^}]*status="499"[^}]*\} 1', metrics)
    assert not re.search(r'route="/v1/documents",status="500"', metrics)


def test_a_body_that_stalls_or_trickles_is_refused_408_and_leaves_no_part_file(idle_api, tmp_path):
    base = str(idle_api.base_url)
    body = multipart("xyz", make_pdf([(595, 842)] * 6))
    assert len(body) > 8000  # trickled 100 bytes at a time, it takes longer than the idle time
    head = (
        "POST /v1/documents HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        f"boundary=xyz\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    start = time.monotonic()
    stalled = raw(base, head, [body[:100]], pause_s=3.0)  # then nothing for 3 s: idle is 1 s
    assert stalled.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 10
    trickle = [body[i : i + 100] for i in range(0, len(body), 100)]
    slow = raw(base, head, trickle, pause_s=0.05)  # ~2 KB/s; the minimum here is 50 KB/s
    assert slow.startswith(b"HTTP/1.1 408"), slow[:200]
    assert b"KB/s" in slow
    parts = list((tmp_path / "data").rglob("*.part"))
    assert not parts


def test_head_answers_every_get_route_with_its_headers_and_no_body(idle_api):
    for path in ("/healthz", "/v1/documents", "/", "/ui/app.js"):
        get, head = idle_api.get(path), idle_api.head(path)
        assert head.status_code == get.status_code != 405, path  # /v1/documents: 404, no pages
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
    assert idle_api.head("/v1/search").status_code == 405  # POST only: no GET, no HEAD


def test_the_schema_is_behind_the_key_unless_made_public(tiny_model_dir, tmp_path, encoder):
    for public, status in ((False, 401), (True, 200)):
        settings = settings_for(
            tiny_model_dir, tmp_path / f"d{public}", api_keys="k1", public_docs=public
        )
        app = create_app(settings, run_worker=False, encoder=encoder)
        with serving(app) as base, httpx.Client(base_url=base) as client:
            assert client.get("/openapi.json").status_code == status
            keyed = client.get("/openapi.json", headers={"Authorization": "Bearer k1"})
            assert keyed.status_code == 200 and "paths" in keyed.json()
            assert client.get("/docs").status_code == 200  # a page with no data: it asks
            assert client.get("/healthz").status_code == 200


def test_collection_names_are_matched_whole(idle_api):
    for bad in ("docs\n", "docs\nx", "", "-docs", "a" * 65):
        found = idle_api.get("/v1/documents", params={"collection": bad})
        assert_error_shape(found, 422)
        searched = idle_api.post("/v1/search", json={"query": "x", "collection": bad})
        assert_error_shape(searched, 422)
        pdf = make_pdf([(595, 842)])
        uploaded = idle_api.post(
            "/v1/documents",
            files={"file": ("a.pdf", pdf, "application/pdf")},
            data={"collection": bad},
        )
        assert_error_shape(uploaded, 422)


def test_the_same_file_with_other_metadata_is_refused_while_it_is_queued(idle_api):
    pdf = make_pdf([(595, 842)])

    def send(meta: str | None) -> httpx.Response:
        data = {"metadata": meta} if meta else {}
        return idle_api.post(
            "/v1/documents", files={"file": ("a.pdf", pdf, "application/pdf")}, data=data
        )

    first = send('{"team": "a"}')
    assert first.status_code == 202
    assert send('{"team": "a"}').json()["job_id"] == first.json()["job_id"]  # the same: kept
    assert send(None).json()["job_id"] == first.json()["job_id"]  # none given: nothing lost
    other = assert_error_shape(send('{"team": "b"}'), 409)
    assert first.json()["job_id"] in other["detail"] and '"team": "a"' in other["detail"]


def test_the_openapi_schema_says_what_the_server_enforces(idle_api):
    spec = idle_api.get("/openapi.json").json()
    pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
    listing = spec["paths"]["/v1/documents"]["get"]["parameters"]
    [collection] = [p for p in listing if p["name"] == "collection"]
    assert collection["schema"]["anyOf"][0]["pattern"] == pattern
    form = spec["paths"]["/v1/documents"]["post"]["requestBody"]["content"]
    schema = form["multipart/form-data"]["schema"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["collection"]["pattern"] == pattern
    search = spec["components"]["schemas"]["SearchRequest"]["properties"]
    assert search["collection"]["anyOf"][0]["pattern"] == pattern
    assert "filter" in search and search["filter"].get("description")


def test_documents_are_found_by_the_id_prefix_commands_show(tiny_model_dir, tmp_path, encoder):
    from tests.server import wait_job

    settings = settings_for(tiny_model_dir, tmp_path / "data")
    with serving(create_app(settings, encoder=encoder)) as base, httpx.Client(base_url=base) as api:
        pdf = make_pdf([(595, 842)])
        job = api.post("/v1/documents", files={"file": ("a.pdf", pdf, "application/pdf")}).json()
        doc_id = wait_job(api, job["job_id"])["doc_id"]
        assert api.get(f"/v1/documents/{doc_id[:12]}").json()["doc_id"] == doc_id
        assert api.head(f"/v1/documents/{doc_id[:12]}/pages/1/image").status_code == 200
        assert_error_shape(api.get(f"/v1/documents/{doc_id[:3]}"), 404)  # too short to say
        assert_error_shape(api.get("/v1/documents/zzzzzzzz"), 404)
        assert api.delete(f"/v1/documents/{doc_id[:12]}").status_code == 204
        assert_error_shape(api.get(f"/v1/documents/{doc_id}"), 404)
