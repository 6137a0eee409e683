"""ColPali (PaliGemma), and the fixed square geometry it shares with ColGemma3.

These models see every page as one square image of a fixed size (448 px for ColPali's
PaliGemma-448, 896 px for Gemma 3), whatever its shape, and return a fixed square grid of
visual tokens (32 x 32 patches of 14 px for ColPali; Gemma 3 average-pools its 64 x 64 patches
to 16 x 16). We render straight at that square: the processor's resize is then a no-op, and the
page's aspect ratio is stretched exactly as the model was trained to see it. The token budget
does not apply: the grid is the checkpoint's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from retrieval.errors import ConfigurationError, PageTooLarge
from retrieval.models.base import Family, grid_error


@dataclass(frozen=True)
class SquareImage(Family):
    side_px: int = 448  # the square the processor resizes every image to
    side_tokens: int = 32  # visual tokens along each side

    bound = ("side_px", "side_tokens")

    @property
    def geometry(self) -> str:
        n = self.side_tokens
        return f"one {self.side_px} px square, {n} x {n} tokens, whatever the page's shape"

    def bind(self, processor: Any) -> SquareImage:
        size = processor.image_processor.size
        get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
        height, width = int(get("height")), int(get("width"))
        if height != width:
            raise ConfigurationError(
                f"{self.name}: the processor resizes images to {width} x {height} px; only "
                "square sizes are supported"
            )
        side_tokens = math.isqrt(int(processor.image_seq_length))
        return replace(self, side_px=height, side_tokens=side_tokens)

    def size_for(self, width: float, height: float, budget: int) -> tuple[int, int]:
        if not (width > 0 and height > 0) or not math.isfinite(width * height):
            raise PageTooLarge(f"page size {width} x {height} is not a usable size")
        return self.side_px, self.side_px

    def processed_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return self.side_px, self.side_px

    def grid_of(self, size: tuple[int, int], budget: int) -> tuple[int, int]:
        return self.side_tokens, self.side_tokens

    def arrange(
        self, visual: np.ndarray, image_size: tuple[int, int], inputs: dict[str, Any], index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        side = self.side_tokens
        if len(visual) != side * side:
            raise grid_error(self.name, len(visual), f"{side}x{side}")
        return visual.reshape(side, side, -1), visual[:0]


COLPALI = SquareImage(
    "colpali",
    "ColPali",
    "ColPaliProcessor",
    trained_budget=1024,
    prompt_tokens=8,
    model_types=("paligemma",),
    examples=("vidore/colpali-v1.3", "vidore/colpali-v1.2"),
    reads_hidden_states=True,
)
