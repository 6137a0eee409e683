"""ColModernVBert (a ModernBERT encoder behind a SigLIP vision tower): Idefics3's tiling, 8 x 8
visual tokens per 512 px tile plus a global view, and a bidirectional encoder."""

from __future__ import annotations

from retrieval.models.idefics3 import Tiles

COLMODERNVBERT = Tiles(
    "colmodernvbert",
    "ColModernVBert",
    "ColModernVBertProcessor",
    trained_budget=832,
    prompt_tokens=14,
    model_types=("modernvbert",),
    examples=("ModernVBERT/colmodernvbert",),
)
