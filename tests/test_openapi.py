"""Contract test of the REST API with schemathesis (its CLI, as documented in README): requests
generated from /openapi.json must never get a 5xx, every response must match the schema, a
request the schema forbids must be refused, and every other check schemathesis has but two."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.documents import make_pdf
from tests.server import serving, wait_job
from tests.test_api import settings_for

# Every check but two. positive_data_acceptance wants every schema-valid request to succeed,
# and a schema cannot say that a file's bytes must be a PDF or an image (415 otherwise), that a
# text field holds JSON (filter, metadata: 422 when it does not), or how many tokens a query
# has (a heatmap's token index: 422 beyond them). use_after_free links a DELETE and a GET of one
# document id across collections (the same file may be in two; deleting it from one leaves it
# in the other).
CHECKS = "all"
EXCLUDED = "positive_data_acceptance,use_after_free"


@pytest.mark.slow  # ~30 s: a thousand generated requests
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
                "--exclude-checks",
                EXCLUDED,
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


def test_the_http_contract_changes_only_on_purpose(tmp_path):
    """The OpenAPI schema is the contract clients are generated from: any change to it shows
    here. After an intended change, write the new one with
    ``uv run python -m tests.test_openapi > tests/data/openapi.json`` and say why in the
    commit."""
    import json

    expected = json.loads((Path(__file__).parent / "data" / "openapi.json").read_text())
    assert _schema(tmp_path) == expected


def _schema(data_dir: Path) -> dict:
    from retrieval.config import Settings

    app = create_app(Settings(_env_file=None, data_dir=data_dir, qdrant_url=None), run_worker=False)
    return app.openapi()


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(_schema(Path(folder)), indent=1, sort_keys=True))
