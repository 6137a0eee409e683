"""Mean-pooling of the visual patch grid, the cheap first stage of two-stage search.

A page's visual tokens form a (rows, cols) raster. Pooling each row (and each column) gives a few
dozen vectors per page instead of ~750, which an HNSW index can search; the full multivector then
reranks the candidates. The prompt tokens (``special``) are appended unpooled: they carry
page-level information and are few.
"""

from __future__ import annotations

import numpy as np


def pool_rows(visual: np.ndarray, special: np.ndarray) -> np.ndarray:
    """Mean of each visual row, then the special tokens.

    visual: float32 (rows, cols, dim); special: float32 (n_special, dim).
    Returns float32 (rows + n_special, dim).
    """
    _check(visual, special)
    return np.concatenate([visual.mean(axis=1), special]).astype(np.float32, copy=False)


def pool_cols(visual: np.ndarray, special: np.ndarray) -> np.ndarray:
    """Mean of each visual column, then the special tokens.

    visual: float32 (rows, cols, dim); special: float32 (n_special, dim).
    Returns float32 (cols + n_special, dim).
    """
    _check(visual, special)
    return np.concatenate([visual.mean(axis=0), special]).astype(np.float32, copy=False)


def _check(visual: np.ndarray, special: np.ndarray) -> None:
    if visual.ndim != 3 or special.ndim != 2 or visual.shape[2] != special.shape[1]:
        raise ValueError(
            f"expected visual (rows, cols, dim) and special (n, dim); got {visual.shape}, "
            f"{special.shape}"
        )
