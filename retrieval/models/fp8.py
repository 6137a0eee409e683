"""FP8 matmuls for the linear layers of a model's vision blocks and text decoder layers.

Float8 (e4m3) matrix products run at twice bf16's peak on Hopper GPUs (H100, H200) and on Ada.
``use(stacks)`` swaps each ``nn.Linear`` of the given blocks for an ``Fp8Linear``: its weight is
quantized once, with a scale per output channel; its input at every call, with a scale per row
(per token), so one large token does not flatten the others. Products accumulate in fp32 and
come out in bf16. Embeddings move (BENCHMARKS.md gives the per-token cosine against bf16), so
it is a setting, off by default; the patch embedding, the merger and the projection head stay in
the model's dtype.

Built on torch's own ``_scaled_mm`` (the op torchao calls) rather than torchao: torchao's
float8 config refuses to quantize without a GPU of compute capability 8.9, while ``_scaled_mm``
also runs on CPU, so the same code is tested where CI runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from retrieval.errors import ConfigurationError

_FP8 = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(_FP8).max  # 448
_TINY = 1e-12  # an all-zero row keeps a finite scale


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (rows, k) -> (x in fp8, (rows, 1) fp32 scales) with x ~= fp8 * scale per row."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=_TINY) / _FP8_MAX
    return (x.float() / scale).clamp(-_FP8_MAX, _FP8_MAX).to(_FP8), scale


class Fp8Linear(nn.Module):
    """``y = x W^T + b`` of an ``nn.Linear``, as one fp8 product scaled per row of ``x`` and
    per output channel of ``W``. Same shapes and output dtype as the layer it replaces."""

    # Hopper's fast fp8 accumulation, as torchao uses it; False promotes partial sums to fp32
    # more often (slower, a little closer to bf16).
    fast_accum = True

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight, scale = _quantize_rows(linear.weight.detach())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", weight)  # (out, in), fp8
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out), fp32
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        quantized, scale = _quantize_rows(rows)
        out = torch._scaled_mm(
            quantized,
            self.weight.t(),  # column-major, as the op wants its second operand
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=torch.bfloat16,
            use_fast_accum=self.fast_accum,
        )
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3"


def fits(linear: nn.Linear) -> bool:
    """Whether the fp8 kernels take this layer's sizes (multiples of 16)."""
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def check_device(device: str) -> None:
    """Raise ``ConfigurationError`` unless ``device`` runs fp8 products (CPU, or a GPU of compute
    capability 8.9 or newer)."""
    if not device.startswith("cuda"):
        return
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(torch.device(device))
        raise ConfigurationError(
            f"COLQWEN_FP8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); "
            f"{device} is a {name} ({major}.{minor}). Unset COLQWEN_FP8."
        )


def use(stacks: Iterable[Any]) -> int:
    """Swap every ``nn.Linear`` inside the blocks of ``stacks`` (module lists) whose sizes fit
    for an ``Fp8Linear``, in place. Returns how many were swapped."""
    swapped = 0
    for stack in stacks:
        for block in stack:
            for child in list(block.modules()):
                for attr, layer in list(child.named_children()):
                    if isinstance(layer, nn.Linear) and fits(layer):
                        setattr(child, attr, Fp8Linear(layer))
                        swapped += 1
    return swapped
