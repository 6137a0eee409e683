"""ColQwen2 and ColQwen2.5 (Qwen2-VL and Qwen2.5-VL vision towers): one geometry.

The vision tower cuts an image into 14 px patches and merges 2 x 2 of them into one visual
token, so an image of (28 * cols) x (28 * rows) pixels becomes a (rows, cols) grid of tokens,
in raster order between the prompt's 4 prefix and 7 suffix tokens. For each page we pick the
largest such grid within the visual-token budget whose aspect ratio is the page's up to
rounding to whole tokens, and render straight to that size: the processor's own resize is then
a no-op, and no pixel is rendered only to be thrown away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from retrieval.errors import PageTooLarge
from retrieval.models.base import Family

TOKEN_PX = 28  # patch 14 px x spatial merge 2
MIN_TOKENS = 4  # the processor's min_pixels = 4 * 28 * 28
MAX_ASPECT = 200  # the processor refuses more elongated images


@dataclass(frozen=True)
class QwenVL(Family):
    def grid_for(self, width: float, height: float, budget: int) -> tuple[int, int]:
        """The largest rows * cols <= budget with rows = round(cols * height / width)."""
        if not (width > 0 and height > 0) or not math.isfinite(width * height):
            raise PageTooLarge(f"page size {width} x {height} is not a usable size")
        aspect = height / width
        if max(aspect, 1 / aspect) > MAX_ASPECT:
            raise PageTooLarge(
                f"page is {width:g} x {height:g}: an aspect ratio beyond {MAX_ASPECT}:1 cannot "
                "be rendered as one page image"
            )
        best: tuple[int, int] | None = None
        for cols in range(1, budget + 1):
            rows = max(1, round(cols * aspect))
            if rows * cols > budget:
                break  # rows * cols never shrinks as cols grows
            if max(rows, cols) > MAX_ASPECT * min(rows, cols):
                continue  # rounding rows up to 1 can make the grid more elongated than the page
            if best is None or rows * cols > best[0] * best[1]:
                best = (rows, cols)
        if best is None or best[0] * best[1] < MIN_TOKENS:
            raise PageTooLarge(
                f"page is {width:g} x {height:g}: no grid of at least {MIN_TOKENS} tokens fits "
                f"within {budget}"
            )
        return best

    def pixels_for(self, grid: tuple[int, int]) -> tuple[int, int]:
        rows, cols = grid
        return cols * TOKEN_PX, rows * TOKEN_PX


COLQWEN2 = QwenVL("colqwen2", "ColQwen2", "ColQwen2Processor", trained_budget=768, prompt_tokens=11)
COLQWEN2_5 = QwenVL(
    "colqwen2_5", "ColQwen2_5", "ColQwen2_5_Processor", trained_budget=768, prompt_tokens=11
)
