"""Contract test of the REST API with schemathesis (its CLI, as documented in README): requests
generated from /openapi.json must never get a 5xx, and every response must match the schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from app.main import create_app
from tests.documents import make_pdf
from tests.server import serving, wait_job
from tests.test_api import settings_for

CHECKS = "not_a_server_error,response_schema_conformance"


def test_schemathesis_finds_no_5xx_and_no_schema_violation(tiny_model_dir, tmp_path, encoder):
    with serving(create_app(settings_for(tiny_model_dir, tmp_path / "data"))) as base:
        with httpx.Client(base_url=base) as client:  # something to find, list and render
            r = client.post("/v1/documents", files={"file": ("a.pdf", make_pdf([(595, 842)] * 2))})
            assert wait_job(client, r.json()["job_id"])["status"] == "done"
        schemathesis = Path(sys.executable).with_name("schemathesis")
        result = subprocess.run(
            [
                str(schemathesis),
                "run",
                f"{base}/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                "25",
                "--generation-deterministic",
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,  # schemathesis keeps a cache in its working directory
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
