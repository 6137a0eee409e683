"""PyTorch's SDPA kernels on the attention shapes of an ingestion batch: time, TFLOP/s and the
largest error against a float32 reference, per kernel. Diagnostic companion to model_probe: it
shows what the kernel PyTorch picks (cuDNN's on Hopper GPUs) is worth against the others.

    uv run python -m bench.attention_probe --device cuda [--pages 32] [--tokens 759]

Shapes, for ``--pages`` A4 pages of ``--tokens`` visual tokens each (ColQwen2 at 768: 759):
the vision tower's attention within each page (4 patches a token, 16 heads of 80), the same
over pages padded to a longer one with the padding masked out (a batch of two grids), and the
language model's causal attention (12 query heads, 2 key/value heads of 128).
"""

from __future__ import annotations

import argparse
import time

from bench.common import header, table

KERNELS = ["FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"]


def shapes(pages: int, tokens: int, device: str):
    """name -> (q, k, v, kwargs, flops) in bf16."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=torch.bfloat16, generator=g)

    patches = 4 * tokens
    out = {}
    q, k, v = (rand(pages, 16, patches, 80) for _ in range(3))
    out["vision, one grid"] = (q, k, v, {}, 4 * pages * 16 * patches**2 * 80)
    longer = patches + 4 * 64  # a US Legal page beside A4 ones: padded, masked keys
    q, k, v = (rand(pages, 16, longer, 80) for _ in range(3))
    mask = torch.ones(pages, 1, 1, longer, dtype=torch.bool, device=device)
    mask[: pages // 2, ..., patches:] = False
    out["vision, two grids (masked)"] = (
        q,
        k,
        v,
        {"attn_mask": mask},
        4 * pages * 16 * longer**2 * 80,
    )
    n = tokens + 11
    q, k, v = rand(pages, 12, n, 128), rand(pages, 2, n, 128), rand(pages, 2, n, 128)
    causal = {"is_causal": True, "enable_gqa": True}
    out["language model, causal"] = (q, k, v, causal, 2 * pages * 12 * n * n * 128)
    return out


def run(q, k, v, kwargs, kernel: str, reps: int = 10) -> tuple[float, object]:
    """(seconds a call, output) with only ``kernel`` enabled."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, kernel)):
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            F.scaled_dot_product_attention(q, k, v, **kwargs)
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps, out


def reference(q, k, v, kwargs):
    """float32, the math kernel; one page at a time to bound its memory."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    with sdpa_kernel(SDPBackend.MATH):
        for i in range(q.shape[0]):
            extra = dict(kwargs)
            if "attn_mask" in extra:
                extra["attn_mask"] = extra["attn_mask"][i : i + 1]
            rows.append(
                F.scaled_dot_product_attention(
                    q[i : i + 1].float(), k[i : i + 1].float(), v[i : i + 1].float(), **extra
                )
            )
    return torch.cat(rows)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pages", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=759)
    args = parser.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(args.device), flush=True)
    rows = []
    for name, (q, k, v, kwargs, flops) in shapes(args.pages, args.tokens, args.device).items():
        ref = reference(q, k, v, kwargs)
        for kernel in KERNELS:
            try:
                seconds, out = run(q, k, v, kwargs, kernel)
            except RuntimeError as exc:  # a kernel that cannot serve this shape is a result
                print(f"{name}, {kernel}: {str(exc).splitlines()[0][:160]}", flush=True)
                rows.append([name, kernel, "cannot", "", ""])
                continue
            error = float((out.float() - ref).abs().max())
            print(f"{name}, {kernel}: {seconds * 1e3:.2f} ms", flush=True)
            rows.append(
                [
                    name,
                    kernel,
                    f"{seconds * 1e3:.2f}",
                    f"{flops / seconds / 1e12:.0f}",
                    f"{error:.4f}",
                ]
            )
        del ref
        torch.cuda.empty_cache()
    print(header("SDPA kernels on an ingestion batch's attention, bf16", "bench.attention_probe"))
    print(table(["attention", "kernel", "ms a call", "TFLOP/s", "max error vs fp32"], rows))


if __name__ == "__main__":
    main()
