"""ColQwen2.5 (Qwen2.5-VL): the Qwen2-VL geometry, 14 px patches merged 2 x 2."""

from __future__ import annotations

from retrieval.models.qwen2 import QwenVL

COLQWEN2_5 = QwenVL(
    "colqwen2_5",
    "ColQwen2_5",
    "ColQwen2_5_Processor",
    trained_budget=768,
    prompt_tokens=11,
    model_types=("qwen2_5_vl",),
    examples=("vidore/colqwen2.5-v0.2",),
)
