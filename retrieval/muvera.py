"""MUVERA fixed-dimensional encodings (FDE): one vector per page for a single-vector first stage.

A page's ~750 token vectors become one vector whose dot product with a query's FDE approximates
the MaxSim (Chamfer) score of the two multivectors (Dhulipala et al., 2024). An HNSW graph over
one vector a page builds in seconds where a graph over pooled multivectors takes an hour, and
searching it is a handful of dot products.

Each of ``r_reps`` repetitions splits the space with ``k_sim`` random hyperplanes (SimHash) into
``2**k_sim`` buckets; a document puts the mean of its tokens in each bucket (an empty bucket
borrows the first token of the nearest non-empty bucket by Hamming distance), a query the sum of
its tokens; each bucket is projected to ``dim_proj`` dimensions by a random +-1 matrix. Output
size: ``r_reps * 2**k_sim * dim_proj``.

This is fastembed's ``Muvera`` (Qdrant's library), computed without its per-token Python loop:
the same random draws from the same seed, hence the same encodings (``tests/test_muvera.py``
compares the two), about twenty times faster (0.8 vs 15 ms a page). fastembed itself is not a
runtime dependency: it brings onnxruntime and a model hub client we would not use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_POPCOUNT = np.array([bin(x).count("1") for x in range(256)], dtype=np.int64)


@dataclass(frozen=True)
class FdeParams:
    """What a collection records about its encoding: the same parameters give the same FDEs.

    The default, 16 buckets of 32 dimensions in 20 repetitions (10240-d), ranked the true top
    10 best among the 10240-d choices on both benchmark corpora (BENCHMARKS.md).
    """

    k_sim: int = 4
    dim_proj: int = 32
    r_reps: int = 20
    seed: int = 42

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Muvera:
    """Fixed-dimensional encodings of ``dim``-d multivectors."""

    def __init__(self, dim: int, params: FdeParams = FdeParams()) -> None:
        if params.dim_proj > dim:
            raise ValueError(f"dim_proj {params.dim_proj} exceeds the token dimension {dim}")
        if not 1 <= params.k_sim <= 16:
            raise ValueError("k_sim must be between 1 and 16")
        self.dim, self.params = dim, params
        k, reps = params.k_sim, params.r_reps
        self.buckets = 2**k
        # The same draws, in the same order, as fastembed's Muvera(dim, k, dim_proj, reps, seed).
        rng = np.random.default_rng(params.seed)
        simhash = [rng.normal(size=(dim, k)) for _ in range(reps)]
        self._simhash = np.concatenate(simhash, axis=1)  # (dim, reps * k)
        projections = rng.choice([-1, 1], size=(reps, dim, params.dim_proj))
        if params.dim_proj < dim:
            # (dim, reps * dim_proj): all repetitions' projections in one matmul.
            scale = 1 / np.sqrt(params.dim_proj)
            self._projection = scale * projections.transpose(1, 0, 2).reshape(dim, -1)
        else:  # nothing to reduce: the bucket means themselves, as fastembed does
            self._projection = np.tile(np.eye(dim), reps)
        # (reps, dim, dim_proj) float32: each repetition's projection.
        self._per_rep = (
            self._projection.reshape(dim, reps, params.dim_proj)
            .transpose(1, 0, 2)
            .astype(np.float32)
        )
        self._bits = 1 << np.arange(k)
        ids = np.arange(self.buckets)
        self._hamming = (
            _POPCOUNT[(ids[:, None] ^ ids[None, :]) & 0xFF]
            + _POPCOUNT[(ids[:, None] ^ ids[None, :]) >> 8]
        )  # (buckets, buckets)

    @property
    def size(self) -> int:
        """Dimension of an encoding."""
        return self.params.r_reps * self.buckets * self.params.dim_proj

    def encode_document(self, vectors: np.ndarray) -> np.ndarray:
        """(n_tokens, dim) -> (size,) float32: per bucket the mean of its tokens."""
        return self._encode(vectors, document=True)

    def encode_query(self, vectors: np.ndarray) -> np.ndarray:
        """(n_tokens, dim) -> (size,) float32: per bucket the sum of its tokens."""
        return self._encode(vectors, document=False)

    def _encode(self, vectors: np.ndarray, *, document: bool) -> np.ndarray:
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) == 0:
            raise ValueError(
                f"expected a non-empty (n, {self.dim}) multivector, got {vectors.shape}"
            )
        p = self.params
        n, reps, buckets = len(vectors), p.r_reps, self.buckets
        # Buckets from float64 products, as fastembed draws them: a token on a hyperplane's
        # edge falls on the same side.
        signs = (vectors.astype(np.float64, copy=False) @ self._simhash).reshape(n, reps, -1) > 0
        bucket = signs.astype(np.int64) @ self._bits  # (n, reps)
        member = bucket.T[:, None, :] == np.arange(buckets)[None, :, None]  # (reps, buckets, n)
        # Projection is linear: sum each bucket's tokens first (one matmul with the one-hot
        # membership, BLAS, off the GIL), then project the (reps, buckets) sums: a third of
        # the products of projecting every token (0.8 against 2.9 ms a page).
        x = vectors.astype(np.float32, copy=False)
        sums = (member.reshape(reps * buckets, n).astype(np.float32) @ x).reshape(reps, buckets, -1)
        projected = sums @ self._per_rep  # (reps, buckets, dim_proj)
        if document:
            counts = member.sum(axis=2)  # (reps, buckets)
            occupied = counts > 0
            projected[occupied] /= counts[occupied][:, None]
            # Empty bucket: the first token of the nearest occupied bucket (lowest id on ties).
            first = np.where(occupied, member.argmax(axis=2), n)  # (reps, buckets)
            distance = np.where(occupied[:, None, :], self._hamming[None], 1 << 20)
            nearest = distance.argmin(axis=2)  # (reps, buckets)
            rep, empty = np.nonzero(~occupied)
            if len(rep):
                tokens = x[first[rep, nearest[rep, empty]]]  # (empties, dim)
                projected[rep, empty] = np.einsum("ed,edp->ep", tokens, self._per_rep[rep])
        return projected.reshape(-1).astype(np.float32, copy=False)
