"""Search over the REST API under load: requests/s and p50/p95/p99 latency with 1, 16 and 64
concurrent clients, then the share answered 429 when the query queue bound is small.

    uv run python -m bench.api_bench [--requests 256] [--clients 1 16 64] [--small-bound 4]

Each configuration runs the real app (`create_app`, query batching on, as deployed) under
uvicorn on a loopback port, over a 20-page collection ingested first, tiny model on CPU; clients
are threads sending POST /v1/search (two_stage, top 10) with varied queries, back to back.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from app.main import create_app
from bench.common import header, table
from retrieval.config import Settings
from tests.documents import make_pdf
from tests.server import serving, wait_job
from tests.tiny_model import write_tiny_model


def load(base: str, clients: int, requests: int) -> dict[str, float]:
    """``requests`` searches spread over ``clients`` threads; latency of the 200s."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def client_loop(worker: int, n: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            for i in range(n):
                query = f"quarterly revenue table {worker} {i % 17}"
                start = time.perf_counter()
                r = client.post("/v1/search", json={"query": query, "top_k": 10})
                took = (time.perf_counter() - start) * 1000
                if r.status_code not in (200, 429):
                    raise RuntimeError(f"{r.status_code}: {r.text}")
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        latencies.append(took)

    per_client = max(1, requests // clients)
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients), [per_client] * clients))
    elapsed = time.perf_counter() - start
    ok = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "rps": len(statuses) / elapsed,
        "ok_rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ok, 50)),
        "p95": float(np.percentile(ok, 95)),
        "p99": float(np.percentile(ok, 99)),
        "rejected": statuses.count(429) / len(statuses),
    }


def serve_corpus(model: Path, data: Path, **overrides):
    settings = Settings(
        _env_file=None,
        model=str(model),
        device="cpu",
        data_dir=data,
        max_visual_tokens=768,
        render_workers=1,
        qdrant_url=None,
        **overrides,
    )
    return serving(create_app(settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256, help="per configuration")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--small-bound", type=int, default=4, help="COLQWEN_MAX_PENDING_QUERIES")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    model = write_tiny_model(work / "tiny")
    data = work / "data"
    rows = []
    for bound in (256, args.small_bound):
        with serve_corpus(model, data, max_pending_queries=bound) as base:
            if bound == 256:
                with httpx.Client(base_url=base, timeout=300) as client:
                    pdf = make_pdf([(595, 842)] * 20)
                    job = client.post("/v1/documents", files={"file": ("corpus.pdf", pdf)}).json()
                    assert wait_job(client, job["job_id"])["status"] == "done"
            load(base, 4, 16)  # warm up
            for clients in args.clients if bound == 256 else [max(args.clients)]:
                s = load(base, clients, args.requests)
                rows.append(
                    [
                        bound,
                        clients,
                        f"{s['rps']:.1f}",
                        f"{s['ok_rps']:.1f}",
                        f"{s['p50']:.0f}",
                        f"{s['p95']:.0f}",
                        f"{s['p99']:.0f}",
                        f"{100 * s['rejected']:.1f}%",
                    ]
                )
                print(rows[-1], flush=True)
    title = "REST search under load, tiny model on CPU, 20-page collection"
    print(header(title, "bench.api_bench"))
    print(
        table(
            [
                "queue bound",
                "concurrent clients",
                "answers/s",
                "searches/s (200)",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "answered 429",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
