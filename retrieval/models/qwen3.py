"""ColQwen3 (Qwen3-VL): Qwen2-VL's prompt and layout with 16 px patches, so a visual token
covers 32 x 32 pixels. Its checkpoints project to 320-d token vectors by default."""

from __future__ import annotations

from retrieval.models.qwen2 import QwenVL

COLQWEN3 = QwenVL(
    "colqwen3",
    "ColQwen3",
    "ColQwen3Processor",
    trained_budget=768,
    prompt_tokens=11,
    dim=320,
    model_types=("qwen3_vl",),
    patch_px=16,
)
