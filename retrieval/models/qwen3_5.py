"""ColQwen3.5 (Qwen3.5, a hybrid linear-attention language model): Qwen3-VL's vision side,
32 x 32 pixels a visual token."""

from __future__ import annotations

from retrieval.models.qwen2 import QwenVL

COLQWEN3_5 = QwenVL(
    "colqwen3_5",
    "ColQwen3_5",
    "ColQwen3_5Processor",
    trained_budget=768,
    prompt_tokens=11,
    model_types=("qwen3_5",),
    patch_px=16,
)
