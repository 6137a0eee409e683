"""Mean-pooling of the visual patch grid, the cheap first stage of two-stage search.

A page's visual tokens form a (rows, cols) raster. Pooling each row (and each column) gives a few
dozen vectors per page instead of ~750, which an HNSW index can search; the full multivector then
reranks the candidates. The prompt tokens (``special``) are appended unpooled: they carry
page-level information and are few.

Each mean is scaled back to unit length, as colpali-engine's own token poolers do. A mean of unit
tokens is shorter the more its tokens differ, so unscaled means favour uniform rows (margins,
blank space) over rows with content, and let the unit-length prompt tokens outweigh every row in
MaxSim. On the search benchmark's corpus this lifts the first stage's candidate recall at a given
prefetch by 0.1-0.2 (BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np


def pool_rows(visual: np.ndarray, special: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """Mean of each visual row (unit length unless ``normalize=False``), then the special tokens.

    visual: float32 (rows, cols, dim); special: float32 (n_special, dim).
    Returns float32 (rows + n_special, dim).
    """
    _check(visual, special)
    return _stack(visual.mean(axis=1), special, normalize)


def pool_cols(visual: np.ndarray, special: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """Mean of each visual column (unit length unless ``normalize=False``), then the special tokens.

    visual: float32 (rows, cols, dim); special: float32 (n_special, dim).
    Returns float32 (cols + n_special, dim).
    """
    _check(visual, special)
    return _stack(visual.mean(axis=0), special, normalize)


def _stack(means: np.ndarray, special: np.ndarray, normalize: bool) -> np.ndarray:
    if normalize:
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        means = means / np.maximum(norms, 1e-12)  # an all-zero mean stays zero
    return np.concatenate([means, special]).astype(np.float32, copy=False)


def _check(visual: np.ndarray, special: np.ndarray) -> None:
    if visual.ndim != 3 or special.ndim != 2 or visual.shape[2] != special.shape[1]:
        raise ValueError(
            f"expected visual (rows, cols, dim) and special (n, dim); got {visual.shape}, "
            f"{special.shape}"
        )
