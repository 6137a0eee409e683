"""What a small ingestion job costs with a render pool of its own (as each worker job had) and
with one pool shared by all jobs (the worker's now): tiny model on the CPU, a 3-page PDF a job.

    uv run python -m bench.job_bench [--jobs 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from indexer.pipeline import IngestPipeline
from indexer.render import RenderOptions
from indexer.render_pool import Renderer
from indexer.sources import discover
from retrieval.encoder import Encoder
from retrieval.store import PageStore
from retrieval.store.edge import EdgeBackend
from tests.documents import make_pdf
from tests.tiny_model import write_tiny_model

BUDGET = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="render processes")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    encoder = Encoder.load(
        str(write_tiny_model(tmp / "model")), device="cpu", max_visual_tokens=BUDGET
    )
    store = PageStore(EdgeBackend(tmp / "data"))
    options = RenderOptions(max_visual_tokens=BUDGET)
    with Renderer(options, workers=args.workers).start(wait=True) as shared:
        for how, renderer in (("a pool of its own", None), ("one shared pool", shared)):
            seconds = []
            for i in range(args.jobs):
                name = f"{'own' if renderer is None else 'shared'}{i}"
                pdf = tmp / f"{name}.pdf"
                pdf.write_bytes(make_pdf([(595 + i, 842)] * 3) + name.encode())
                store.create_collection(name, model=encoder.model_id, max_visual_tokens=BUDGET)
                pipeline = IngestPipeline(
                    encoder, store, name, render_workers=args.workers, renderer=renderer
                )
                start = time.perf_counter()
                pipeline.run(discover([pdf]))
                seconds.append(time.perf_counter() - start)
            print(f"{how}: {statistics.median(seconds):.2f} s a job (median of {args.jobs})")
    store.close()


if __name__ == "__main__":
    main()
