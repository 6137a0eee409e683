"""ColIdefics3 (ColSmol), and the tiled geometry it shares with ColModernVBert.

These processors scale a page so its longest side is ``longest_edge`` pixels, round both sides
up to whole tiles of ``tile_px`` (512), cut the image into those tiles, and add the whole page
shrunk to one tile as a global view. Each tile becomes ``side_tokens`` x ``side_tokens`` visual
tokens (8 x 8 = 64), tile after tile, the global view's last. We render straight at the tiled
size, so the processor neither resizes nor pads; the page grid is the tiles put back in place,
(tile_rows * 8, tile_cols * 8), and the global view's tokens are kept beside it: stored with
the page's full multivector, and appended unpooled to the row and column means like the prompt
tokens. The token budget does not apply: the tiling is the checkpoint's (``longest_edge``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from retrieval.errors import PageTooLarge
from retrieval.models.base import Family, grid_error


@dataclass(frozen=True)
class Tiles(Family):
    longest_edge: int = 2048  # px of the longest side after the processor's first resize
    tile_px: int = 512
    side_tokens: int = 8  # visual tokens along a tile's side

    @property
    def geometry(self) -> str:
        n = self.side_tokens
        return (
            f"{self.tile_px} px tiles of {n} x {n} tokens (longest side {self.longest_edge} px) "
            "and a global view"
        )

    def bind(self, processor: Any) -> Tiles:
        ip = processor.image_processor
        return replace(
            self,
            longest_edge=int(ip.size["longest_edge"]),
            tile_px=int(ip.max_image_size["longest_edge"]),
            side_tokens=math.isqrt(int(processor.image_seq_len)),
        )

    def tiles_for(self, width: float, height: float) -> tuple[int, int]:
        """(tile rows, tile cols) the processor cuts an image of this size into, as
        transformers' Idefics3 image processor computes them; (1, 1) means no split."""
        if not (width > 0 and height > 0) or not math.isfinite(width * height):
            raise PageTooLarge(f"page size {width} x {height} is not a usable size")
        longest, tile = self.longest_edge, self.tile_px
        aspect = width / height
        if width >= height:  # scale the longest side to longest_edge; the other stays even
            w, h = longest, int(longest / aspect)
            h += h % 2
        else:
            h, w = longest, int(longest * aspect)
            w += w % 2
        h, w = max(h, 1), max(w, 1)
        aspect = w / h
        if w >= h:  # then round up to whole tiles, as resize_for_vision_encoder does
            w = math.ceil(w / tile) * tile
            h = math.ceil(int(w / aspect) / tile) * tile
        else:
            h = math.ceil(h / tile) * tile
            w = math.ceil(int(h * aspect) / tile) * tile
        return max(1, h // tile), max(1, w // tile)

    def grid_for(self, width: float, height: float, budget: int) -> tuple[int, int]:
        rows, cols = self.tiles_for(width, height)
        return rows * self.side_tokens, cols * self.side_tokens

    def pixels_for(self, grid: tuple[int, int]) -> tuple[int, int]:
        rows, cols = grid
        return cols // self.side_tokens * self.tile_px, rows // self.side_tokens * self.tile_px

    def sequence_tokens(self, grid: tuple[int, int]) -> int:
        per_tile = self.side_tokens**2 + 2  # <fake_token_around_image><row_i_col_j> + tokens
        tiles = (grid[0] // self.side_tokens) * (grid[1] // self.side_tokens)
        return per_tile * (tiles + 1) + grid[0] // self.side_tokens + self.prompt_tokens

    def grid_tokens(
        self, visual: np.ndarray, grid: tuple[int, int], image_size: tuple[int, int]
    ) -> np.ndarray:
        grid_tokens, _ = self.arrange(visual, image_size, {}, 0)
        if grid_tokens.shape[:2] != tuple(grid):
            raise grid_error(self.name, len(visual), f"a {grid[0]}x{grid[1]} grid")
        return grid_tokens

    def arrange(
        self, visual: np.ndarray, image_size: tuple[int, int], inputs: dict[str, Any], index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tiles back in place, each tile's tokens in raster order; the global view apart."""
        rows, cols = self.tiles_for(*image_size)
        side, tile_tokens = self.side_tokens, self.side_tokens**2
        split = rows * cols > 1
        expected = tile_tokens * (rows * cols + 1) if split else tile_tokens
        if len(visual) != expected:
            raise grid_error(self.name, len(visual), f"{rows}x{cols} tiles of {tile_tokens}")
        if not split:
            return visual.reshape(side, side, -1), visual[:0]
        local, global_view = visual[:-tile_tokens], visual[-tile_tokens:]
        grid = (
            local.reshape(rows, cols, side, side, -1)
            .transpose(0, 2, 1, 3, 4)
            .reshape(rows * side, cols * side, -1)
        )
        return np.ascontiguousarray(grid), global_view


COLIDEFICS3 = Tiles(
    "colidefics3",
    "ColIdefics3",
    "ColIdefics3Processor",
    trained_budget=832,  # an A4 page: 3 x 4 tiles of 64 tokens and the global view
    prompt_tokens=14,
    model_types=("idefics3",),
    examples=("vidore/colSmol-256M", "vidore/colSmol-500M"),
)
