"""Where the time goes on a GPU: forward alone per batch size, preprocessing per page, and the
attention implementation in use. Diagnostic companion to ingest_bench.

    uv run python -m bench.model_probe --device cuda
"""

from __future__ import annotations

import argparse
import time

from PIL import Image, ImageDraw

from bench.ingest_bench import full_size_encoder


def page(i: int) -> Image.Image:
    image = Image.new("RGB", (644, 924), "white")
    draw = ImageDraw.Draw(image)
    for k in range(40):
        draw.text((20 + (k % 3) * 200, 20 * k + i % 7), f"line {k} of page {i}", fill="black")
    return image


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    args = parser.parse_args()
    encoder = full_size_encoder(args.device, 32)
    model = encoder.model
    print(
        "attn:",
        model.config._attn_implementation,
        "vision:",
        model.visual.config._attn_implementation,
        "text:",
        model.config.text_config._attn_implementation,
        flush=True,
    )
    images = [page(i) for i in range(64)]
    t0 = time.perf_counter()
    encoder.preprocess(images[:32])
    print(
        f"preprocess: {(time.perf_counter() - t0) / 32 * 1000:.1f} ms/page (1 thread)", flush=True
    )
    for b in args.batches:
        inputs = encoder.preprocess(images[:b])
        inputs = {k: v.to(args.device) for k, v in inputs.items()}
        with torch.inference_mode():
            model(**inputs)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            reps = max(2, 64 // b)
            for _ in range(reps):
                model(**inputs)
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / reps
        mem = torch.cuda.max_memory_allocated() / 2**30
        print(f"batch {b}: {b / dt:.1f} pages/s forward alone, peak {mem:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
