"""The REST service, over real HTTP on a loopback port, with the tiny model and the embedded
store; the ingestion worker runs in-process as ``colqwen serve`` runs it."""

from __future__ import annotations

import io
import signal
import time

import httpx
import pytest
from PIL import Image

from app.main import create_app
from indexer.render import RenderOptions, open_document
from retrieval.config import Settings
from retrieval.encoder import Encoder
from tests.conftest import shared_pdfs
from tests.documents import make_pdf
from tests.server import free_port, serving, start_process, wait_job, wait_ready

BUDGET = 64


def settings_for(tiny_model_dir, data_dir, **overrides) -> Settings:
    values = dict(
        model=str(tiny_model_dir),
        device="cpu",
        max_visual_tokens=BUDGET,
        data_dir=data_dir,
        render_workers=2,
        batch_size=8,
        job_lease_s=5.0,
        qdrant_url=None,
    )
    return Settings(_env_file=None, **{**values, **overrides})


@pytest.fixture
def api(tiny_model_dir, tmp_path, encoder):
    settings = settings_for(tiny_model_dir, tmp_path / "data")
    with serving(create_app(settings)) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client


def upload(client, name: str, data: bytes, **form) -> httpx.Response:
    return client.post("/v1/documents", files={"file": (name, data, "application/pdf")}, data=form)


def oracle_score(model: Encoder, query: str, path_or_bytes, page: int) -> float:
    [q] = model.embed_queries([query])
    with open_document(path_or_bytes, options=RenderOptions(max_visual_tokens=BUDGET)) as doc:
        [emb] = model.embed_pages([doc.render(page - 1).image])
    return float((q @ emb.multivector.T).max(axis=1).sum())


def test_good_pdfs_upload_ingest_search_image_delete(api, tiny_model_dir):
    files = sorted(shared_pdfs("good").glob("*.pdf"))
    accepted = {}
    for f in files:
        r = upload(api, f.name, f.read_bytes(), metadata='{"source": "shared"}')
        assert r.status_code == 202, r.text
        accepted[f.name] = r.json()
    # The same bytes again: the same job (still queued or running), not a second one.
    again = upload(api, files[0].name, files[0].read_bytes())
    assert again.status_code in (200, 202)
    if again.status_code == 202:
        assert again.json()["job_id"] == accepted[files[0].name]["job_id"]
    for name, body in accepted.items():
        job = wait_job(api, body["job_id"])
        assert job["status"] == "done", (name, job)
        assert job["pages_done"] == job["pages_total"] > 0
    # Now indexed: uploading it again answers 200 with the document.
    r = upload(api, files[0].name, files[0].read_bytes())
    assert r.status_code == 200 and r.json()["status"] == "indexed"
    listing = api.get("/v1/documents", params={"limit": 5}).json()
    assert listing["count"] == len(files) and len(listing["data"]) == 5
    assert (
        sum(d["page_count"] for d in api.get("/v1/documents", params={"limit": 100}).json()["data"])
        == 371
    )

    r = api.post("/v1/search", json={"query": "installing packages", "top_k": 5, "mode": "exact"})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 5 and hits[0]["metadata"] == {"source": "shared"}
    model = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=BUDGET)
    by_name = {f.name: f for f in files}
    for hit in hits[:3]:
        expected = oracle_score(model, "installing packages", by_name[hit["source"]], hit["page"])
        assert hit["score"] == pytest.approx(expected, abs=1e-2)

    top = hits[0]
    png = api.get(top["image_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    with open_document(
        by_name[top["source"]], options=RenderOptions(max_visual_tokens=BUDGET)
    ) as doc:
        assert image.size == doc.render(top["page"] - 1).pixel_size
    thumb = Image.open(io.BytesIO(api.get(top["image_url"] + "&width=100").content))
    assert thumb.width == 100

    assert api.delete(f"/v1/documents/{top['doc_id']}").status_code == 204
    assert api.get(f"/v1/documents/{top['doc_id']}").status_code == 404
    after = api.post(
        "/v1/search", json={"query": "installing packages", "top_k": 100, "mode": "exact"}
    ).json()
    assert top["doc_id"] not in {h["doc_id"] for h in after["hits"]}
    listing = api.get("/v1/documents", params={"limit": 100}).json()
    assert top["doc_id"] not in {d["doc_id"] for d in listing["data"]}


BAD_EXPECTED = {
    "invalid-44-bytes.pdf": "not a valid PDF",
    "bug1020226.pdf": "cannot be parsed",
    "REDHAT-1531897-0.pdf": "cannot be parsed",
    "poppler-742-0-fuzzed.pdf": "cannot be parsed",
    "Brotli-Prototype-FileA.pdf": "cannot be parsed",
    "encrypted-libreoffice.pdf": "password required",
    "issue6010_1.pdf": "password required",
    "saslprep-r6.pdf": "password required",
    # PDFium reports this fuzzed file as encrypted or as corrupt, depending on its prior state.
    "poppler-395-0-fuzzed.pdf": ("password required", "cannot be parsed"),
    "poppler-85140-0.pdf": "absurd size",
}


def test_bad_pdfs_end_in_failed_jobs_with_their_reason(api):
    folder = shared_pdfs("bad")
    jobs = {
        name: upload(api, name, (folder / name).read_bytes()).json()["job_id"]
        for name in BAD_EXPECTED
    }
    for name, job_id in jobs.items():
        job = wait_job(api, job_id)
        assert job["status"] == "failed", name
        expected = BAD_EXPECTED[name]
        assert any(
            e in job["error"] for e in ((expected,) if isinstance(expected, str) else expected)
        )
        assert name in job["error"]
        assert "PDFium" not in job["error"]  # the cause in words, not the library's code
    # The giant images render within the budget and are indexed.
    for name in ("hugemono.pdf", "enormous.pdf"):
        job = wait_job(api, upload(api, name, (folder / name).read_bytes()).json()["job_id"])
        assert job["status"] == "done" and job["pages_done"] == 1
    # With its password, an encrypted file is ingested.
    r = upload(
        api, "enc.pdf", (folder / "encrypted-libreoffice.pdf").read_bytes(), password="openpassword"
    )
    assert wait_job(api, r.json()["job_id"])["status"] == "done"


def test_bad_requests_are_4xx_with_a_json_body(tiny_model_dir, tmp_path, encoder):
    settings = settings_for(tiny_model_dir, tmp_path / "data", max_upload_mb=1)
    with (
        serving(create_app(settings, run_worker=False)) as base,
        httpx.Client(base_url=base) as api,
    ):
        cases = [
            (upload(api, "big.pdf", b"%PDF-1.4\n" + b"0" * (2 * 2**20)), 413),
            (upload(api, "notes.txt", b"just some text"), 415),
            (upload(api, "empty.pdf", b""), 422),
            (upload(api, "a.pdf", make_pdf([(595, 842)]), metadata="{not json"), 422),
            (upload(api, "a.pdf", make_pdf([(595, 842)]), metadata="[1, 2]"), 422),
            (upload(api, "a.pdf", make_pdf([(595, 842)]), collection="../x"), 422),
            (api.post("/v1/search", json={"query": "x", "top_k": 101}), 422),
            (api.post("/v1/search", json={"query": ""}), 422),
            (api.post("/v1/search", json={"query": "x" * 5000}), 422),
            (api.post("/v1/search", json={"query": "x", "filter": {"colour": "red"}}), 422),
            (api.post("/v1/search", json={"query": "x", "mode": "fuzzy"}), 422),
            (api.post("/v1/search", json={"query": "x", "collection": "nope"}), 404),
            (
                api.post(
                    "/v1/search", content=b"{broken", headers={"content-type": "application/json"}
                ),
                422,
            ),
            (api.get("/v1/jobs/nope"), 404),
            (api.get("/v1/documents/abc"), 404),
            (api.get("/v1/documents", params={"filter": "{oops"}), 422),
            (api.get("/v1/documents/abc/pages/1/image"), 404),
        ]
        for i, (response, status) in enumerate(cases):
            assert response.status_code == status, (i, response.status_code, response.text)
            body = response.json()
            assert set(body) == {"error", "detail", "request_id"} and body["detail"], (i, body)
            assert body["request_id"] == response.headers["x-request-id"]


def test_api_keys(tiny_model_dir, tmp_path, encoder):
    settings = settings_for(tiny_model_dir, tmp_path / "data", api_keys="k-one, k-two")
    with (
        serving(create_app(settings, run_worker=False)) as base,
        httpx.Client(base_url=base) as api,
    ):
        assert api.get("/healthz").status_code == 200
        assert api.get("/readyz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k-one"}):
            r = api.post("/v1/search", json={"query": "x"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
            assert api.get("/metrics", headers=headers).status_code == 401
        for key in ("k-one", "k-two"):
            r = api.get("/v1/documents", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 404  # authorised; the default collection does not exist yet
        assert api.get("/metrics", headers={"Authorization": "Bearer k-two"}).status_code == 200


def test_concurrent_queries_share_forward_passes(api):
    r = upload(api, "a.pdf", make_pdf([(595, 842), (612, 792)]))
    assert wait_job(api, r.json()["job_id"])["status"] == "done"
    import concurrent.futures as cf

    def one(i: int) -> dict:
        return api.post("/v1/search", json={"query": f"query number {i}", "mode": "exact"}).json()

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    assert all(len(r["hits"]) == 2 for r in results)
    # Batched results equal the same query alone.
    alone = one(7)
    assert [h["score"] for h in alone["hits"]] == pytest.approx(
        [h["score"] for h in results[7]["hits"]], abs=1e-4
    )
    metrics = api.get("/metrics").text
    batches = [
        line for line in metrics.splitlines() if line.startswith("colqwen_query_batch_size_count")
    ]
    queries = [
        line for line in metrics.splitlines() if line.startswith("colqwen_query_batch_size_sum")
    ]
    assert float(batches[0].split()[-1]) < float(
        queries[0].split()[-1]
    )  # fewer passes than queries
    assert 'colqwen_http_requests_total{method="POST",route="/v1/search",status="200"}' in metrics
    assert "colqwen_pages_ingested_total 2.0" in metrics
    assert "colqwen_jobs_queued 0.0" in metrics
    # Each stage of the 33 searches is timed: the model, then the store's (exact: one scan).
    for stage in ("embed", "original", "total"):
        line = f'colqwen_search_stage_seconds_count{{stage="{stage}"}} 33.0'
        assert line in metrics, stage


@pytest.mark.slow  # a process killed or started cold: seconds each
def test_killed_server_resumes_its_job_on_restart(tiny_model_dir, tmp_path):
    path = shared_pdfs("good") / "reportlab-userguide.pdf"  # 134 pages
    env = {
        "COLQWEN_MODEL": str(tiny_model_dir),
        "COLQWEN_DEVICE": "cpu",
        "COLQWEN_MAX_VISUAL_TOKENS": str(BUDGET),
        "COLQWEN_DATA_DIR": str(tmp_path / "data"),
        "COLQWEN_RENDER_WORKERS": "1",
        "COLQWEN_BATCH_SIZE": "4",
        # Progress reaches the job table with each lease renewal (a third of the lease): often
        # enough to see the job part-way through the 134 pages even on a fast run.
        "COLQWEN_JOB_LEASE_S": "1.5",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_process(env, port)
    try:
        wait_ready(base, server)
        with httpx.Client(base_url=base, timeout=30) as api:
            job_id = upload(api, path.name, path.read_bytes()).json()["job_id"]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                job = api.get(f"/v1/jobs/{job_id}").json()
                if job["status"] == "running" and job["pages_done"] > 0:
                    break
                time.sleep(0.05)
        assert job["status"] == "running" and job["pages_done"] < 134, job
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    server = start_process(env, port)
    try:
        wait_ready(base, server)
        with httpx.Client(base_url=base, timeout=30) as api:
            seen = []  # progress of the resumed job: monotonic, over the whole document
            while (job := api.get(f"/v1/jobs/{job_id}").json())["status"] not in ("done", "failed"):
                seen.append((job["pages_done"], job["pages_total"]))
                time.sleep(0.05)
            seen.append((job["pages_done"], job["pages_total"]))
            assert [d for d, _ in seen] == sorted(d for d, _ in seen), seen
            assert all(t is None or d <= t for d, t in seen), seen
            assert {t for _, t in seen if t is not None} == {134}, seen
            assert job["status"] == "done" and job["attempts"] == 2, job
            doc = api.get(f"/v1/documents/{job['doc_id']}").json()
            assert doc["status"] == "indexed" and doc["page_count"] == 134
            hits = api.post(
                "/v1/search",
                json={
                    "query": "x",
                    "top_k": 100,
                    "mode": "exact",
                    "filter": {"doc_id": job["doc_id"]},
                },
            ).json()["hits"]
            assert len(hits) == 100
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    from retrieval.store import PageStore

    store = PageStore.from_settings(Settings(_env_file=None, data_dir=tmp_path / "data"))
    try:
        assert sorted(store.stored_page_numbers("pages", job["doc_id"])) == list(range(1, 135))
        assert store.count_pages("pages") == 134  # no duplicates
    finally:
        store.close()


def test_cli_ingests_through_the_server_when_the_store_is_locked(
    tiny_model_dir, tmp_path, monkeypatch, encoder
):
    import json

    from typer.testing import CliRunner

    from app.cli import app as cli_app

    folder = tmp_path / "pdfs"
    folder.mkdir()
    for i in range(3):
        (folder / f"d{i}.pdf").write_bytes(make_pdf([(595, 842)] * (i + 1)))
    (folder / "junk.pdf").write_bytes(b"not a pdf at all")
    data = tmp_path / "data"
    for key, value in {
        "COLQWEN_MODEL": str(tiny_model_dir),
        "COLQWEN_DEVICE": "cpu",
        "COLQWEN_MAX_VISUAL_TOKENS": str(BUDGET),
        "COLQWEN_DATA_DIR": str(data),
    }.items():
        monkeypatch.setenv(key, value)
    with serving(create_app(settings_for(tiny_model_dir, data))) as base:
        runner = CliRunner()
        locked = runner.invoke(cli_app, ["ingest", str(folder)])
        assert locked.exit_code == 1
        assert "in use by another process" in locked.stderr and "--server" in locked.stderr
        result = runner.invoke(cli_app, ["ingest", str(folder), "--server", base, "--json"])
        assert result.exit_code == 1, result.output  # junk.pdf fails
        report = json.loads(result.stdout)
        assert report["summary"]["indexed"] == 3 and report["summary"]["failed"] == 1
        assert [d["name"] for d in report["documents"] if d["status"] == "failed"] == ["junk.pdf"]
        again = json.loads(
            runner.invoke(cli_app, ["ingest", str(folder), "--server", base, "--json"]).stdout
        )
        assert again["summary"]["skipped"] == 3
        with httpx.Client(base_url=base) as api:
            hits = api.post("/v1/search", json={"query": "x", "top_k": 50}).json()["hits"]
        assert len(hits) == 6
