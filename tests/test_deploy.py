"""Deployment files, validated without a Docker engine, and the topology they describe run in
one process: API without its worker + a separate worker + the server backend."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from app.cli import app as cli_app
from app.main import create_app
from indexer import worker as worker_module
from indexer.envfile import env_example
from indexer.worker import Worker
from tests.documents import make_pdf
from tests.server import serving, wait_job
from tests.test_api import settings_for

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cluster.yml"]


def compose(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_follow_the_compose_spec(name):
    schema = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
    jsonschema.validate(compose(name), schema)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_accepts_the_files(tmp_path):
    for name in [*COMPOSE_FILES, "Dockerfile", ".env.example"]:
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "deploy").mkdir()
    shutil.copy(ROOT / "deploy" / "nginx.conf", tmp_path / "deploy" / "nginx.conf")
    # As README says: cp .env.example .env, and set the sealing key in it.
    env = (
        (ROOT / ".env.example")
        .read_text()
        .replace(
            "# COLQWEN_SECRET_KEY=",
            "COLQWEN_SECRET_KEY=Q0Q1d2NqcGZtdmV6d2JxTnR6a1hqS0VwS0h2b2JvU0o=",
        )
    )
    (tmp_path / ".env").write_text(env)
    for files in (["docker-compose.yml"], COMPOSE_FILES):
        args = [a for f in files for a in ("-f", f)]
        result = subprocess.run(
            ["docker-compose", *args, "config", "-q"], capture_output=True, text=True, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr


def test_compose_topology():
    base = compose("docker-compose.yml")["services"]
    assert set(base) == {"qdrant", "postgres", "api", "lb", "worker", "worker-cpu"}
    # Pinned, and within one minor version of the qdrant-client we install: qdrant-client
    # warns at every connection to a server further apart.
    server = re.fullmatch(r"qdrant/qdrant:v(\d+)\.(\d+)\.\d+", base["qdrant"]["image"])
    client = [int(v) for v in importlib.metadata.version("qdrant-client").split(".")[:2]]
    assert server and int(server[1]) == client[0] and abs(int(server[2]) - client[1]) <= 1
    assert (
        "healthcheck" in base["qdrant"]
        and "qdrant-storage:/qdrant/storage" in base["qdrant"]["volumes"]
    )
    assert base["api"]["command"][:1] == ["serve"] and "--no-worker" in base["api"]["command"]
    assert base["api"]["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert base["api"]["environment"]["COLQWEN_QDRANT_URL"] == "http://qdrant:6333"
    assert base["worker"]["command"] == ["worker"]
    devices = base["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert base["worker-cpu"]["profiles"] == ["cpu"]
    # The queue and the originals in PostgreSQL: pinned, kept on a volume, checked healthy
    # before the API and the workers start; no data volume shared between services.
    postgres = base["postgres"]
    assert re.fullmatch(r"postgres:\d+\.\d+-\w+", postgres["image"])
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    for name in ("api", "worker", "worker-cpu"):
        service = base[name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["environment"]["COLQWEN_DATABASE_URL"].startswith("postgresql://")
        assert "COLQWEN_SECRET_KEY" in service["environment"]  # required when distributed
        assert not [v for v in service["volumes"] if v.split(":")[1] == "/data"]
    assert "ports" not in base["api"] and base["lb"]["ports"] == ["8000:8000"]
    assert "proxy_pass http://colqwen_api" in (ROOT / "deploy" / "nginx.conf").read_text()
    cluster = compose("docker-compose.cluster.yml")["services"]
    nodes = [cluster[n] for n in ("qdrant", "qdrant-2", "qdrant-3")]
    assert {n["image"] for n in nodes} == {base["qdrant"]["image"]}
    assert all(n["environment"]["QDRANT__CLUSTER__ENABLED"] == "true" for n in nodes)
    assert all("ports" not in n for n in nodes)  # p2p stays private
    assert "--bootstrap" in cluster["qdrant-2"]["command"]
    assert cluster["api"]["environment"]["COLQWEN_QDRANT_REPLICATION_FACTOR"] == "2"
    assert cluster["api"]["deploy"]["replicas"] == 2  # behind the load balancer
    for name in ("api", "worker", "worker-cpu"):
        assert cluster[name]["environment"]["COLQWEN_DATABASE_URL"].startswith("postgresql://")


def test_dockerfile_installs_from_the_lock_like_ci_and_runs_real_commands():
    dockerfile = (ROOT / "Dockerfile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "uv sync --frozen" in ci
    assert re.search(r"RUN uv sync --frozen --no-dev\n", dockerfile)
    assert "COPY pyproject.toml uv.lock" in dockerfile
    assert re.search(r"^USER colqwen$", dockerfile, re.M)
    assert 'ENTRYPOINT ["colqwen"]' in dockerfile
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'colqwen = "app.cli:app"' in pyproject
    # The health check asks a route the app serves; CMD and compose commands are real commands.
    assert "http://127.0.0.1:8000/healthz" in dockerfile
    routes = set(create_app(run_worker=False).openapi()["paths"])
    assert "/healthz" in routes
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    commands = [cmd] + [
        s["command"]
        for s in compose("docker-compose.yml")["services"].values()
        if "command" in s and not s.get("image", "").startswith("qdrant/qdrant:")
    ]
    for command in commands:
        help_text = CliRunner().invoke(cli_app, [command[0], "--help"], terminal_width=200).stdout
        for flag in [a for a in command[1:] if a.startswith("--")]:
            assert flag in help_text, (command, flag)


def test_env_example_lists_every_setting():
    assert (ROOT / ".env.example").read_text() == env_example()


def test_api_and_a_separate_worker_share_a_qdrant_server(
    tiny_model_dir, tmp_path, encoder, monkeypatch
):
    """The compose topology in one process: `serve --no-worker`, `worker`, qdrant-client. The
    worker's render pool, kept between jobs, is closed when idle and started again by a job."""
    monkeypatch.setattr(worker_module, "POOL_IDLE_S", 0.5)
    settings = settings_for(tiny_model_dir, tmp_path / "data", qdrant_url=":memory:")
    app = create_app(settings, run_worker=False)
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as api:
        services = app.state.services
        assert services.store.kind == "server"
        job_id = api.post(
            "/v1/documents", files={"file": ("a.pdf", make_pdf([(595, 842)] * 3))}
        ).json()["job_id"]
        assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"  # no worker in the API
        stop = threading.Event()
        worker = Worker(settings, services.encoder, services.documents)
        thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
        thread.start()
        try:
            job = wait_job(api, job_id)
            deadline = time.monotonic() + 30
            while worker._renderer is not None:  # idle: its render processes are stopped
                assert time.monotonic() < deadline
                time.sleep(0.1)
            again = api.post(
                "/v1/documents", files={"file": ("b.pdf", make_pdf([(842, 595)] * 2))}
            ).json()["job_id"]
            assert wait_job(api, again)["status"] == "done"
        finally:
            stop.set()
            thread.join()
        assert worker._renderer is None  # stopped with the worker
        assert job["status"] == "done" and job["pages_done"] == 3
        hits = api.post("/v1/search", json={"query": "x", "mode": "two_stage"}).json()["hits"]
        assert len(hits) == 5 and {h["page"] for h in hits} == {1, 2, 3}
