"""Rendering throughput: our renderer (straight to the model's pixel size, PDFium) against the
peers' way (pdf2image/poppler at 200 DPI, then resize to the same size), on the same pages.

    uv sync --group bench   # pdf2image; needs poppler-utils' pdftoppm on PATH
    uv run python -m bench.render_bench [PDF ...] [--max-pages N]

Defaults to every PDF in ../shared/pdfs/good.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench.common import SHARED_PDFS, header, table
from indexer.render import RenderOptions, open_document
from indexer.render_pool import PageRendered, Renderer, RenderRequest
from retrieval.models import family


def pages_of(files: list[Path], max_pages: int) -> list[tuple[Path, int]]:
    out = []
    for f in files:
        with open_document(f) as doc:
            out += [(f, i) for i in range(doc.info.page_count)]
    return out[:max_pages]


def ours(pages, workers: int, supersample: int = 1) -> float:
    options = RenderOptions(supersample=supersample)
    by_file: dict[Path, list[int]] = {}
    for f, i in pages:
        by_file.setdefault(f, []).append(i + 1)
    with Renderer(options, workers=workers) as renderer:
        renderer.info(RenderRequest(pages[0][0], "warm-up"))  # start the pool outside the clock
        start = time.perf_counter()
        requests = [RenderRequest(f, f.name, pages=p) for f, p in by_file.items()]
        n = sum(isinstance(e, PageRendered) for e in renderer.stream(requests))
        elapsed = time.perf_counter() - start
    assert n == len(pages)
    return n / elapsed


def pdf2image_200dpi(pages, threads: int) -> float:
    from pdf2image import convert_from_path
    from PIL import Image

    by_file: dict[Path, list[int]] = {}
    for f, i in pages:
        by_file.setdefault(f, []).append(i)
    start = time.perf_counter()
    n = 0
    for f, indices in by_file.items():
        images = convert_from_path(
            f,
            dpi=200,
            first_page=min(indices) + 1,
            last_page=max(indices) + 1,
            thread_count=threads,
        )
        for image in images:
            # The peers then let the processor downscale to the model's size; do the same resize.
            w_pt, h_pt = image.width * 72 / 200, image.height * 72 / 200
            image.convert("RGB").resize(
                family("colqwen2").size_for(w_pt, h_pt, 768), Image.Resampling.BICUBIC
            )
            n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pdfs", nargs="*", type=Path)
    parser.add_argument("--max-pages", type=int, default=400)
    args = parser.parse_args()
    files = args.pdfs or sorted((SHARED_PDFS / "good").glob("*.pdf"))
    pages = pages_of(files, args.max_pages)
    cores = os.cpu_count() or 1
    rows = []
    base = pdf2image_200dpi(pages, threads=1)
    rows.append(["pdf2image 200 DPI + resize", 1, f"{base:.1f}", f"{base:.1f}", "1.0x"])
    pool = pdf2image_200dpi(pages, threads=cores)
    rows.append(
        [
            "pdf2image 200 DPI + resize",
            cores,
            f"{pool:.1f}",
            f"{pool / cores:.1f}",
            f"{pool / base:.1f}x",
        ]
    )
    for label, workers, k in [
        ("ours (PDFium, straight to target)", 0, 1),
        ("ours (PDFium, straight to target)", cores, 1),
        ("ours, supersample 2x", 0, 2),
        ("ours, supersample 2x", cores, 2),
    ]:
        rate = ours(pages, workers, supersample=k)
        procs = max(1, workers)
        rows.append(
            [
                label,
                procs if workers else "1 (in-process)",
                f"{rate:.1f}",
                f"{rate / procs:.1f}",
                f"{rate / base:.1f}x",
            ]
        )
    print(header(f"Rendering: {len(pages)} pages from {len(files)} PDFs", "bench.render_bench"))
    print(
        table(
            ["renderer", "processes", "pages/s", "pages/s per process", "vs pdf2image 1 proc"], rows
        )
    )


if __name__ == "__main__":
    main()
