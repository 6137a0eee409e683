"""ColGemma3 (Gemma 3): a fixed 896 px square, average-pooled to 16 x 16 visual tokens,
inside Gemma's chat prompt."""

from __future__ import annotations

from retrieval.models.paligemma import SquareImage

COLGEMMA3 = SquareImage(
    "colgemma3",
    "ColGemma3",
    "ColGemmaProcessor3",
    trained_budget=256,
    prompt_tokens=16,
    model_types=("gemma3",),
    side_px=896,
    side_tokens=16,
)
