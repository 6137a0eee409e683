"""Pooled multivectors: a few dozen vectors a page instead of ~750, cheap to score with MaxSim.

Three kinds. ``pool_clusters`` (the default middle stage of search) keeps the centroids of a
few rounds of spherical k-means over the page's tokens: each group of tokens that say the same
thing gets a vector of its own, wherever they sit on the page and however many there are. On the
search benchmark it keeps the true top 10 within its first 50 of 400 FDE candidates where SimHash
buckets need 150 (`regions`: 0.953 against 0.713 at 50; the same on `hard`), for the same number
of vectors (BENCHMARKS.md), at ~1.5 ms a page of ingestion CPU.

``pool_buckets`` (the middle stage of collections made before clusters) groups a page's tokens by
the side of a few random hyperplanes they fall on (SimHash, as MUVERA does) and keeps one mean per
group: the near-identical background tokens that fill most of a real page collapse into a few
vectors while tokens with content keep groups of their own. Scoring FDE candidates with these keeps
as much of the true top 10 as colpali-engine's ``HierarchicalTokenPooler`` at pool factor 8-16
(within 0.01 on the benchmark's hard corpus) for a seventh of its cost (~7 ms a page against ~47:
BENCHMARKS.md). It needs no knowledge of the token layout, so it can be computed from the stored
multivector of any model.

``pool_rows`` / ``pool_cols`` average each row (column) of the visual patch grid; the prompt
tokens (``special``) are appended unpooled. Collections made before FDEs search an HNSW graph
over them. On pages that are mostly background a row's mean dilutes what the row says.

Each mean is scaled back to unit length, as colpali-engine's own token poolers do. A mean of unit
tokens is shorter the more its tokens differ, so unscaled means favour uniform rows (margins,
blank space) over rows with content, and let the unit-length prompt tokens outweigh every row in
MaxSim. On the search benchmark's corpus this lifts the first stage's candidate recall at a given
prefetch by 0.1-0.2 (BENCHMARKS.md).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

BUCKET_BITS = 5  # hyperplanes per repetition: up to 32 groups
BUCKET_REPS = 2  # independent repetitions: up to 64 vectors a page
_BUCKET_SEED = 7
CLUSTERS = 64  # centroids a page at most: the middle stage's cost is proportional
CLUSTER_ROUNDS = 4  # k-means rounds: 3 ranked as well as 6 on the bench (BENCHMARKS.md)


@lru_cache(maxsize=8)
def _hyperplanes(dim: int) -> np.ndarray:
    rng = np.random.default_rng(_BUCKET_SEED)
    return rng.standard_normal((dim, BUCKET_REPS * BUCKET_BITS))  # (dim, reps * bits)


def pool_buckets(tokens: np.ndarray) -> np.ndarray:
    """Unit-length mean of each non-empty SimHash bucket, for each repetition.

    tokens: float32 (n_tokens, dim), every token of the page. Returns float32 (m, dim) with
    m <= BUCKET_REPS * 2**BUCKET_BITS, ordered by repetition then bucket id.
    """
    if tokens.ndim != 2 or len(tokens) == 0:
        raise ValueError(f"expected a non-empty (n_tokens, dim) multivector; got {tokens.shape}")
    n, dim = tokens.shape
    buckets = 2**BUCKET_BITS
    signs = (tokens @ _hyperplanes(dim) > 0).reshape(n, BUCKET_REPS, BUCKET_BITS)
    ids = signs @ (1 << np.arange(BUCKET_BITS)) + np.arange(BUCKET_REPS) * buckets  # (n, reps)
    # Sums per bucket as one matmul with the one-hot membership (BLAS, off the GIL).
    member = np.zeros((BUCKET_REPS * buckets, n), dtype=np.float32)
    member[ids.T, np.arange(n)[None, :]] = 1.0
    sums = member @ tokens.astype(np.float32, copy=False)
    return _unit(sums[member.any(axis=1)])


def pool_clusters(tokens: np.ndarray, k: int = CLUSTERS) -> np.ndarray:
    """Unit-length centroids of spherical k-means over a page's tokens (the non-empty ones).

    tokens: float32 (n_tokens, dim), every token of the page. Returns float32 (m, dim) with
    m <= min(k, n_tokens). Deterministic: the centroids start at ``k`` tokens evenly spaced in
    reading order (the page's layout spreads them over its content), then each round assigns
    every token to its most similar centroid and re-centres each centroid on its tokens.
    """
    if tokens.ndim != 2 or len(tokens) == 0:
        raise ValueError(f"expected a non-empty (n_tokens, dim) multivector; got {tokens.shape}")
    x = tokens.astype(np.float32, copy=False)
    n = len(x)
    k = min(k, n)
    centroids = _unit(x[np.linspace(0, n - 1, k).astype(np.int64)])
    member = np.zeros((k, n), dtype=np.float32)
    for _ in range(CLUSTER_ROUNDS):
        member[:] = 0
        member[(x @ centroids.T).argmax(axis=1), np.arange(n)] = 1.0
        sums = member @ x  # (k, dim): one matmul, off the GIL
        occupied = member.any(axis=1)
        centroids[occupied] = _unit(sums[occupied])  # an empty cluster keeps its centroid
    used = np.unique((x @ centroids.T).argmax(axis=1))
    return np.ascontiguousarray(centroids[used])


def _unit(a: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (an all-zero row stays zero), float32."""
    return (a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)).astype(
        np.float32, copy=False
    )


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
        means = _unit(means)  # an all-zero mean stays zero
    return np.concatenate([means, special]).astype(np.float32, copy=False)


def _check(visual: np.ndarray, special: np.ndarray) -> None:
    if visual.ndim != 3 or special.ndim != 2 or visual.shape[2] != special.shape[1]:
        raise ValueError(
            f"expected visual (rows, cols, dim) and special (n, dim); got {visual.shape}, "
            f"{special.shape}"
        )
