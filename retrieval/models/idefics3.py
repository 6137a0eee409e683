"""ColIdefics3 (ColSmol), and the tiled geometry it shares with ColModernVBert.

These processors resize an image twice: so its longest side is ``longest_edge`` pixels (the
other side even), then up to whole tiles of ``tile_px`` (512); they cut it into those tiles and
add the whole page shrunk to one tile as a global view. Each tile becomes ``side_tokens`` x
``side_tokens`` visual tokens (8 x 8 = 64), tile after tile, the global view's last. The page
grid is the tiles put back in place, (tile_rows * 8, tile_cols * 8), and the global view's
tokens are kept beside it: stored with the page's full multivector, and appended unpooled to
the row and column means like the prompt tokens. The token budget does not apply: the tiling is
the checkpoint's.

Where ``longest_edge`` is a whole number of tiles (the released checkpoints: 2048 and 512), we
render straight at the tiled size: both resizes leave it as it is. Where it is not (say 900 px
and 256 px tiles), no size passes both unchanged: we render at the first resize's size, which
it leaves as it is, and the processor's rounding up to whole tiles is the only resize; the grid
is what that rounding gives (``grid_of``: the processor's arithmetic on the rendered size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from retrieval.errors import ConfigurationError, PageTooLarge
from retrieval.models.base import Family, grid_error

MAX_IMAGE_SIZE = 4096  # transformers' Idefics3 image processor: no side beyond it


@dataclass(frozen=True)
class Tiles(Family):
    longest_edge: int = 2048  # px of the longest side after the processor's first resize
    tile_px: int = 512
    side_tokens: int = 8  # visual tokens along a tile's side

    bound = ("longest_edge", "tile_px", "side_tokens")

    @property
    def geometry(self) -> str:
        n = self.side_tokens
        return (
            f"{self.tile_px} px tiles of {n} x {n} tokens (longest side {self.longest_edge} px) "
            "and a global view"
        )

    def bind(self, processor: Any) -> Tiles:
        ip = processor.image_processor
        if not getattr(ip, "do_image_splitting", True) or not getattr(ip, "do_resize", True):
            raise ConfigurationError(
                f"{self.name}: the processor is configured without resizing or splitting images "
                "into tiles; only the checkpoints' tiled geometry is supported"
            )
        return replace(
            self,
            longest_edge=int(ip.size["longest_edge"]),
            tile_px=int(ip.max_image_size["longest_edge"]),
            side_tokens=math.isqrt(int(processor.image_seq_len)),
        )

    def _to_longest_edge(self, width: float, height: float) -> tuple[int, int]:
        """(width, height) of the processor's first resize, as transformers computes it
        (``_resize_output_size_rescale_to_max_len``, then ``..._scale_below_upper_bound``)."""
        longest = self.longest_edge
        aspect = width / height
        if width >= height:
            w, h = longest, int(longest / aspect)
            h += h % 2
        else:
            h, w = longest, int(longest * aspect)
            w += w % 2
        w, h = max(w, 1), max(h, 1)
        aspect = w / h
        if w >= h and w > MAX_IMAGE_SIZE:
            w, h = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
        elif h > w and h > MAX_IMAGE_SIZE:
            h, w = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
        return max(w, 1), max(h, 1)

    def _to_tiles(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the processor's second resize, up to whole tiles
        (``resize_for_vision_encoder``)."""
        tile = self.tile_px
        aspect = width / height
        if width >= height:
            w = math.ceil(width / tile) * tile
            h = math.ceil(int(w / aspect) / tile) * tile
        else:
            h = math.ceil(height / tile) * tile
            w = math.ceil(int(h * aspect) / tile) * tile
        return w, h

    def processed_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return self._to_tiles(*self._to_longest_edge(*size))

    def size_for(self, width: float, height: float, budget: int) -> tuple[int, int]:
        if not (width > 0 and height > 0) or not math.isfinite(width * height):
            raise PageTooLarge(f"page size {width} x {height} is not a usable size")
        size = self._to_longest_edge(width, height)
        for _ in range(8):  # whole pixels: the first resize of its own output is a no-op
            again = self._to_longest_edge(*size)
            if again == size:
                break
            size = again
        else:
            raise PageTooLarge(f"page size {width} x {height}: no stable image size")
        tiled = self._to_tiles(*size)
        if self._to_longest_edge(*tiled) == tiled and self._to_tiles(*tiled) == tiled:
            return tiled  # neither resize changes it
        return size  # only the rounding up to whole tiles resizes it

    def tiles_of(self, size: tuple[int, int]) -> tuple[int, int]:
        """(tile rows, tile cols) the processor cuts an image of ``size`` px into; (1, 1)
        means no split (one tile, no global view)."""
        width, height = self.processed_size(size)
        return max(1, height // self.tile_px), max(1, width // self.tile_px)

    def grid_of(self, size: tuple[int, int], budget: int) -> tuple[int, int]:
        rows, cols = self.tiles_of(size)
        return rows * self.side_tokens, cols * self.side_tokens

    def sequence_tokens(self, grid: tuple[int, int]) -> int:
        per_tile = self.side_tokens**2 + 2  # <fake_token_around_image><row_i_col_j> + tokens
        tiles = (grid[0] // self.side_tokens) * (grid[1] // self.side_tokens)
        return per_tile * (tiles + 1) + grid[0] // self.side_tokens + self.prompt_tokens

    def grid_tokens(
        self, visual: np.ndarray, grid: tuple[int, int], image_size: tuple[int, int]
    ) -> np.ndarray:
        """A stored page's grid from its recorded ``grid`` and token count alone: a tile's
        side is what the count leaves beside the grid (the global view has one tile's tokens),
        whatever the checkpoint's tile settings were."""
        rows, cols = grid
        extra = len(visual) - rows * cols
        side = math.isqrt(extra) if extra > 0 else rows
        if extra < 0 or side * side != (extra or rows * cols) or rows % side or cols % side:
            raise grid_error(self.name, len(visual), f"a {rows}x{cols} grid")
        tiles = (rows // side, cols // side)
        return self._assemble(visual, tiles, side)

    def arrange(
        self, visual: np.ndarray, image_size: tuple[int, int], inputs: dict[str, Any], index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tiles back in place, each tile's tokens in raster order; the global view apart."""
        tiles = self.tiles_of(image_size)
        grid = self._assemble(visual, tiles, self.side_tokens)
        return grid, visual[grid.shape[0] * grid.shape[1] :]

    def _assemble(self, visual: np.ndarray, tiles: tuple[int, int], side: int) -> np.ndarray:
        rows, cols = tiles
        tile_tokens = side * side
        split = rows * cols > 1
        expected = tile_tokens * (rows * cols + 1) if split else tile_tokens
        if len(visual) != expected:
            raise grid_error(self.name, len(visual), f"{rows}x{cols} tiles of {tile_tokens}")
        if not split:
            return visual.reshape(side, side, -1)
        local = visual[:-tile_tokens]
        grid = (
            local.reshape(rows, cols, side, side, -1)
            .transpose(0, 2, 1, 3, 4)
            .reshape(rows * side, cols * side, -1)
        )
        return np.ascontiguousarray(grid)


COLIDEFICS3 = Tiles(
    "colidefics3",
    "ColIdefics3",
    "ColIdefics3Processor",
    trained_budget=832,  # an A4 page: 3 x 4 tiles of 64 tokens and the global view
    prompt_tokens=14,
    model_types=("idefics3",),
    examples=("vidore/colSmol-256M", "vidore/colSmol-500M"),
)
