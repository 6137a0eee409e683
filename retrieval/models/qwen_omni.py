"""ColQwen2.5-Omni (the Qwen2.5-Omni thinker): Qwen2.5-VL's vision geometry behind a chat
prompt. Listed so that it is refused with the reason instead of failing deep inside loading."""

from __future__ import annotations

from retrieval.models.qwen2 import QwenVL

COLQWEN2_5_OMNI = QwenVL(
    "colqwen2_5_omni",
    "ColQwen2_5Omni",
    "ColQwen2_5OmniProcessor",
    trained_budget=768,
    prompt_tokens=40,
    model_types=("qwen2_5_omni_thinker", "qwen2_5_omni"),
    examples=("vidore/colqwen-omni-v0.1",),
    unavailable=(
        "colpali-engine 0.3.18's ColQwen2_5Omni cannot be constructed with transformers 5.x "
        "(its spatial_merge_size setter reads self.visual, which the thinker no longer has: "
        "AttributeError at model creation)"
    ),
)
