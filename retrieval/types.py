"""Value types passed between modules. Embeddings are float32 numpy arrays; torch stays inside
the encoder."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from retrieval.pooling import pool_cols, pool_rows


@dataclass(frozen=True, eq=False)
class PageEmbedding:
    """One page's late-interaction embedding.

    ``multivector`` holds every non-padding token the model produced for the page, in order:
    4 prompt-prefix tokens, the ``rows * cols`` visual tokens (row-major), then 7 suffix tokens.
    """

    multivector: np.ndarray  # (n_tokens, dim) float32
    grid: tuple[int, int]  # (rows, cols) of the visual tokens
    visual: np.ndarray  # (rows, cols, dim) float32
    special: np.ndarray  # (n_special, dim) float32: prompt tokens before and after the image

    @property
    def n_tokens(self) -> int:
        return int(self.multivector.shape[0])

    @cached_property
    def pooled_rows(self) -> np.ndarray:
        """(rows + n_special, dim) float32: mean of each visual row, then ``special``."""
        return pool_rows(self.visual, self.special)

    @cached_property
    def pooled_cols(self) -> np.ndarray:
        """(cols + n_special, dim) float32: mean of each visual column, then ``special``."""
        return pool_cols(self.visual, self.special)
