"""The live fidelity monitor: sampled searches re-run in exact mode in the background, their
recall@10 on /metrics, and none of that time on the request's latency."""

from __future__ import annotations

import time

import httpx

from app.main import create_app
from retrieval.config import Settings
from tests.documents import make_pdf
from tests.server import serving, wait_job


def test_sampled_searches_report_recall_against_exact_off_the_request_path(
    tiny_model_dir, tmp_path
):
    settings = Settings(
        _env_file=None,
        model=str(tiny_model_dir),
        device="cpu",
        max_visual_tokens=64,
        data_dir=tmp_path / "data",
        render_workers=1,
        qdrant_url=None,
        fidelity_sample=1.0,  # every search is checked
    )
    app = create_app(settings)
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        pdf = make_pdf([(595, 842), (842, 595), (612, 792)])
        job = client.post("/v1/documents", files={"file": ("a.pdf", pdf, "application/pdf")})
        assert wait_job(client, job.json()["job_id"])["status"] == "done"
        store = app.state.services.store
        search = store.search

        def slow_exact(*args, **kwargs):  # an exact scan of a large corpus takes a while
            if kwargs.get("mode") == "exact":
                time.sleep(2.0)
            return search(*args, **kwargs)

        store.search = slow_exact
        start = time.perf_counter()
        response = client.post("/v1/search", json={"query": "red", "mode": "two_stage"})
        took = time.perf_counter() - start
        assert response.status_code == 200 and took < 1.5  # the exact re-run is not waited for
        client.post("/v1/search", json={"query": "red", "mode": "exact"})  # not monitored
        line = 'colqwen_fidelity_recall_at_10_count{collection="pages",mode="two_stage"} 1.0'
        deadline = time.monotonic() + 30
        while line not in (metrics := client.get("/metrics").text):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
        total = 'colqwen_fidelity_recall_at_10_sum{collection="pages",mode="two_stage"} 1.0'
        assert total in metrics  # three pages: two_stage finds exact's whole top 10
        assert 'mode="exact"' not in metrics.split("colqwen_fidelity")[-1]
