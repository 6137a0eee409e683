"""The CLI and the server as real processes, as a user runs them: Ctrl-C and kill -9 leave no
process behind and lose nothing; mistakes are answered before the model loads; the server
answers /healthz at once and logs what matters, with request ids, without noise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.documents import make_pdf
from tests.server import free_port, wait_ready
from tests.test_api import BUDGET


def process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def wait_gone(pgid: int, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := process_group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.fixture
def cli_env(tiny_model_dir, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")}
    return {
        **env,
        "COLQWEN_MODEL": str(tiny_model_dir),
        "COLQWEN_DEVICE": "cpu",
        "COLQWEN_OCR": "off",
        "COLQWEN_MAX_VISUAL_TOKENS": str(BUDGET),
        "COLQWEN_DATA_DIR": str(tmp_path / "data"),
        "COLQWEN_BATCH_SIZE": "2",
        "COLQWEN_RENDER_WORKERS": "2",
    }


def colqwen(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job has
        **kwargs,
    )


def run(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True
    )
    return result, time.monotonic() - start


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "pdfs"
    folder.mkdir()
    for i in range(4):
        (folder / f"d{i}.pdf").write_bytes(make_pdf([(595, 842)] * (30 + i)))
    return folder  # 126 pages


def wait_ingesting(data: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the collection exists (the model is loaded and pages are flowing), and a little."""
    deadline = time.monotonic() + timeout
    while not (data / "qdrant" / "pages").is_dir():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)


@pytest.mark.slow  # a process killed or started cold: seconds each
@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_interrupted_ingest_leaves_no_process_and_resumes_exactly(cli_env, corpus, how):
    data = Path(cli_env["COLQWEN_DATA_DIR"])
    process = colqwen("ingest", str(corpus), env=cli_env)
    wait_ingesting(data, process)
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # what a terminal sends to the foreground job
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 130, stderr
        assert stderr.count("interrupted") == 1 and "run the command again" in stderr
        assert "Traceback" not in stderr and "terminate called" not in stderr, stderr
    else:
        os.kill(process.pid, signal.SIGKILL)  # the process alone: its children must follow
        process.communicate(timeout=30)
    assert wait_gone(process.pid) == []
    again, _ = run("ingest", str(corpus), "--json", env=cli_env)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)["summary"]
    assert report["failed"] == 0 and report["indexed"] + report["skipped"] == 4
    result, _ = run("collections", "list", "--json", env=cli_env)
    [pages] = json.loads(result.stdout)
    assert pages["pages"] == 126 and pages["documents"] == 4  # none lost, none duplicated


def test_render_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(make_pdf([(595, 842)] * 3))
    script.write_text(
        "import time\n"
        "from indexer.render_pool import Renderer, RenderRequest\n"
        "if __name__ == '__main__':\n"
        "    r = Renderer(workers=2)\n"
        f"    list(r.pages(RenderRequest({str(pdf)!r}, 'a.pdf')))\n"
        "    print('rendered', flush=True)\n"
        "    time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert process.stdout.readline().strip() == "rendered"
    assert len(process_group(process.pid)) >= 3  # the parent, its workers, a resource tracker
    process.kill()
    process.wait()
    assert wait_gone(process.pid, timeout=5) == []


def test_mistakes_are_answered_before_the_model_loads(cli_env, tmp_path):
    for args, code, says in [
        (["search", ""], 1, "the query is empty"),
        (["search", "q", "--mode", "nonsense"], 2, "two_stage"),
        (["search", "q", "--filter", "{oops"], 1, "not valid JSON"),
        (["search", "q"], 1, "colqwen ingest"),  # an empty store: what to do next
        (["docs", "list"], 1, "colqwen ingest"),
    ]:
        result, seconds = run(*args, env=cli_env)
        assert result.returncode == code, (args, result.stderr)
        assert says in result.stderr, (args, result.stderr)
        assert seconds < 3, (args, seconds)
    result, _ = run("docs", "list", "--json", env=cli_env)
    assert json.loads(result.stdout)["error"] == "not_found"


@pytest.mark.slow  # a process killed or started cold: seconds each
def test_server_answers_health_at_once_and_logs_without_noise(cli_env):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    process = colqwen("serve", "--port", str(port), "--log-level", "info", env=cli_env)
    try:
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() - start < 10
            time.sleep(0.02)
        healthy_after = time.monotonic() - start
        wait_ready(base, process)
        with httpx.Client(base_url=base, timeout=30) as api:
            job = api.post(
                "/v1/documents", files={"file": ("a.pdf", make_pdf([(595, 842)] * 2))}
            ).json()
            while api.get(f"/v1/jobs/{job['job_id']}").json()["status"] != "done":
                time.sleep(0.05)
            failed = api.post("/v1/documents", files={"file": ("b.pdf", b"%PDF-1.4\nbroken")})
            while api.get(f"/v1/jobs/{failed.json()['job_id']}").json()["status"] != "failed":
                time.sleep(0.05)
            request_id = api.get("/v1/documents/nope").headers["x-request-id"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=60)
    # Interpreter start included; the model (and torch) load after the server answers.
    assert healthy_after < 3, healthy_after
    assert "FastPlaid" not in log and "Traceback" not in log, log
    assert "/v1/jobs/" not in log  # polls are not logged at INFO
    assert f"[{request_id}] GET /v1/documents/nope -> 404" in log
    assert "POST /v1/documents -> 202" in log
    [failure] = [line for line in log.splitlines() if "failed" in line and "b.pdf" in line]
    assert "not a valid PDF" in failure, failure
