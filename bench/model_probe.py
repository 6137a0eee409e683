"""The forward pass alone on a GPU, per model family and batch size: pages/s, peak memory and
tokens per A4 page, eager and (with ``--modes``) compiled (``Encoder.compile``) with the
warm-up each compile costs. Diagnostic companion to ingest_bench; full-size architectures with
random weights (bench.full_size).

    uv run python -m bench.model_probe --device cuda --families colqwen2 colqwen2_5 colqwen3_5 \\
        [--batches 8 16 32] [--modes eager default reduce-overhead] [--fp8] \\
        [--profile]

``--fp8`` adds each mode again with float8 matmuls (``Encoder.use_fp8``); ``--profile`` prints
the GPU kernels of one forward pass at the largest batch, by time.
"""

from __future__ import annotations

import argparse
import gc
import time

from PIL import Image, ImageDraw

from bench.common import header, table
from bench.ingest_bench import full_size_encoder


def a4_pages(encoder, n: int) -> list[Image.Image]:
    """``n`` text-like A4 pages at the size the family renders them."""
    size = encoder.family.size_for(595, 842, encoder.max_visual_tokens)
    pages = []
    for i in range(n):
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        for k in range(40):
            draw.text((20 + (k % 3) * 200, 20 * k + i % 7), f"line {k} of page {i}", fill="black")
        pages.append(image)
    return pages


def measure(encoder, images, batches) -> dict[int, tuple[float, float, float]]:
    """batch -> (first call s, pages/s, peak GiB) of the forward pass on preprocessed pages."""
    import torch

    out = {}
    for b in batches:
        batch = encoder.preprocess(images[:b])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        encoder.forward(batch)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        reps = max(3, 96 // b)
        t0 = time.perf_counter()
        for _ in range(reps):
            encoder.forward(batch)
        torch.cuda.synchronize()
        rate = b * reps / (time.perf_counter() - t0)
        out[b] = (first, rate, torch.cuda.max_memory_allocated() / 2**30)
        print(f"  batch {b}: first call {first:.1f} s, {rate:.1f} pages/s", flush=True)
    return out


def profile(encoder, images) -> None:
    """The GPU kernels of one forward pass, summed by name, longest first."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch = encoder.preprocess(images)
    encoder.forward(batch)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        encoder.forward(batch)
        torch.cuda.synchronize()
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90)
    )


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--families", nargs="+", default=["colqwen2"])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["eager"],
        help="eager, and torch.compile modes: default, reduce-overhead (CUDA graphs), ...",
    )
    parser.add_argument("--fp8", action="store_true", help="each mode also with fp8 matmuls")
    parser.add_argument("--profile", action="store_true", help="GPU kernels of one forward pass")
    args = parser.parse_args()
    rows = []
    variants = [(m, fp8) for m in args.modes for fp8 in ([False, True] if args.fp8 else [False])]
    for name in args.families:
        for mode, fp8 in variants:
            label = mode + (" + fp8" if fp8 else "")
            print(f"{name}, {label}:", flush=True)
            encoder = full_size_encoder(args.device, max(args.batches), family=name, fp8=fp8)
            # fp8 weights are buffers: count the state, not the parameters
            params = sum(t.numel() for t in encoder.model.state_dict().values()) / 1e9
            images = a4_pages(encoder, max(args.batches))
            [page] = encoder.embed_pages(images[:1])
            visual = page.grid[0] * page.grid[1]
            shape = f"{page.grid[0]} x {page.grid[1]} = {visual} (+{page.n_tokens - visual})"
            warm = 0.0
            if mode != "eager":
                encoder.compile(None if mode == "default" else mode)
                a4 = encoder.family.size_for(595, 842, encoder.max_visual_tokens)
                warm = encoder.warm_up(sizes=[a4])
                print(f"  compile warm-up (A4, batch {encoder.batch_size}): {warm:.1f} s")
            try:
                for b, (_first, rate, peak) in measure(encoder, images, args.batches).items():
                    rows.append(
                        [
                            name,
                            f"{params:.2f}",
                            label,
                            b,
                            f"{rate:.1f}",
                            f"{peak:.1f}",
                            f"{warm:.0f}",
                            shape,
                        ]
                    )
            except Exception as exc:  # a mode that fails is a result too
                print(f"  {label} failed: {type(exc).__name__}: {exc}", flush=True)
                rows.append([name, f"{params:.2f}", label, "-", "failed", "-", "-", "-"])
            if args.profile:
                profile(encoder, images)
            del encoder
            gc.collect()
            torch.cuda.empty_cache()
            torch._dynamo.reset()
    print(
        header("Forward pass alone, full-size models (random weights), bf16", "bench.model_probe")
    )
    print(
        table(
            [
                "family",
                "B params",
                "mode",
                "batch (A4 pages)",
                "pages/s",
                "peak GiB",
                "warm-up s",
                "A4 tokens: rows x cols = visual (+ prompt)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
