"""Where the time goes on a GPU: the forward pass alone per batch size, eager then compiled
(``Encoder.compile``) with the warm-up each costs, and preprocessing per page. Diagnostic
companion to ingest_bench.

    uv run python -m bench.model_probe --device cuda [--batches 8 16 32]
"""

from __future__ import annotations

import argparse
import time

from PIL import Image, ImageDraw

from bench.common import header, table
from bench.ingest_bench import full_size_encoder


def page(i: int) -> Image.Image:
    image = Image.new("RGB", (644, 924), "white")
    draw = ImageDraw.Draw(image)
    for k in range(40):
        draw.text((20 + (k % 3) * 200, 20 * k + i % 7), f"line {k} of page {i}", fill="black")
    return image


def measure(encoder, images, batches, device) -> dict[int, tuple[float, float, float]]:
    """batch -> (first call s, pages/s, peak GiB)."""
    import torch

    out = {}
    for b in batches:
        inputs = encoder.preprocess(images[:b])
        inputs = {k: v.to(device) for k, v in inputs.items()}
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            t0 = time.perf_counter()
            encoder.model(**inputs)
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            reps = max(3, 96 // b)
            t0 = time.perf_counter()
            for _ in range(reps):
                encoder.model(**inputs)
            torch.cuda.synchronize()
        rate = b * reps / (time.perf_counter() - t0)
        out[b] = (first, rate, torch.cuda.max_memory_allocated() / 2**30)
        print(f"batch {b}: first call {first:.1f} s, {rate:.1f} pages/s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args()
    encoder = full_size_encoder(args.device, max(args.batches))
    images = [page(i) for i in range(max(args.batches))]
    t0 = time.perf_counter()
    encoder.preprocess(images[:32])
    preprocess_ms = (time.perf_counter() - t0) / 32 * 1000
    eager = measure(encoder, images, args.batches, args.device)
    encoder.compile()
    warm = encoder.warm_up(grids=((33, 23),))
    print(f"compile warm-up (A4, batch {encoder.batch_size}): {warm:.1f} s", flush=True)
    fast = measure(encoder, images, args.batches, args.device)
    rows = [
        [
            b,
            f"{eager[b][1]:.1f}",
            f"{fast[b][1]:.1f}",
            f"{fast[b][1] / eager[b][1]:.2f}x",
            f"{fast[b][0]:.1f}",
            f"{eager[b][2]:.1f} / {fast[b][2]:.1f}",
        ]
        for b in args.batches
    ]
    print(
        header("Forward pass alone, full-size ColQwen2 (random weights), bf16", "bench.model_probe")
    )
    print(
        table(
            [
                "batch (A4 pages)",
                "eager pages/s",
                "compiled pages/s",
                "speed-up",
                "compiled first call s (after warm-up)",
                "peak GiB eager / compiled",
            ],
            rows,
        )
    )
    print(f"\ncompile warm-up: {warm:.1f} s; preprocess {preprocess_ms:.1f} ms/page (1 thread)")


if __name__ == "__main__":
    main()
