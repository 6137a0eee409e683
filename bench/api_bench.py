"""Search throughput of the REST API: requests/s and p50/p95 latency with 1, 8 and 32
concurrent clients, with and without query batching, on the tiny model (CPU).

    uv run python -m bench.api_bench [--requests 200]

Each configuration runs the real app under uvicorn on a loopback port, over a small collection
ingested first; clients are threads sending POST /v1/search for fixed queries.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import tempfile
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


def run(base: str, clients: int, requests: int) -> tuple[float, float, float]:
    latencies: list[float] = []

    def client_loop(n: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            for i in range(n):
                start = time.perf_counter()
                r = client.post(
                    "/v1/search", json={"query": f"quarterly revenue table {i % 17}", "top_k": 10}
                )
                r.raise_for_status()
                latencies.append((time.perf_counter() - start) * 1000)

    per_client = max(1, requests // clients)
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, [per_client] * clients))
    elapsed = time.perf_counter() - start
    return (
        len(latencies) / elapsed,
        float(np.percentile(latencies, 50)),
        float(np.percentile(latencies, 95)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256, help="per configuration")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    model = write_tiny_model(work / "tiny")
    rows = []
    for batching in (False, True):
        settings = Settings(
            _env_file=None,
            model=str(model),
            device="cpu",
            data_dir=work / f"data-{batching}",
            max_visual_tokens=768,
            query_batching=batching,
            render_workers=1,
            qdrant_url=None,
        )
        with serving(create_app(settings)) as base:
            with httpx.Client(base_url=base, timeout=300) as client:
                pdf = make_pdf([(595, 842)] * 20)
                job = client.post("/v1/documents", files={"file": ("corpus.pdf", pdf)}).json()
                assert wait_job(client, job["job_id"])["status"] == "done"
            run(base, 4, 16)  # warm up
            for clients in args.clients:
                rps, p50, p95 = run(base, clients, args.requests)
                rows.append(
                    ["on" if batching else "off", clients, f"{rps:.1f}", f"{p50:.0f}", f"{p95:.0f}"]
                )
                print(rows[-1], flush=True)
    print(header("REST search, tiny model on CPU, 20-page collection", "bench.api_bench"))
    print(table(["query batching", "concurrent clients", "requests/s", "p50 ms", "p95 ms"], rows))


if __name__ == "__main__":
    main()
