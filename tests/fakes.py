"""Synthetic page embeddings with the real layout (prefix tokens, a visual grid, suffix tokens),
for storage and search tests that need no model."""

from __future__ import annotations

import numpy as np

from retrieval.types import PageEmbedding, PageRecord


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def page_embedding(
    rng: np.random.Generator, rows: int = 4, cols: int = 3, n_special: int = 5, dim: int = 128
) -> PageEmbedding:
    tokens = unit(rng.standard_normal((4 + rows * cols + n_special - 4, dim)))
    prefix, visual, suffix = tokens[:4], tokens[4 : 4 + rows * cols], tokens[4 + rows * cols :]
    return PageEmbedding(
        multivector=np.concatenate([prefix, visual, suffix]),
        grid=(rows, cols),
        visual=visual.reshape(rows, cols, dim),
        special=np.concatenate([prefix, suffix]),
        visual_runs=((4, rows * cols),),
    )


def page_record(
    doc_id: str, page: int, emb: PageEmbedding, *, source: str | None = None, metadata=None
) -> PageRecord:
    rows, cols = emb.grid
    return PageRecord(
        doc_id=doc_id,
        source=source or f"{doc_id}.pdf",
        page_number=page,
        page_count=99,
        size_pt=(595.28, 841.89),
        rotation=0,
        pixel_size=(cols * 28, rows * 28),
        embedding=emb,
        metadata=metadata or {},
    )


def maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    """Brute-force late interaction: sum over query tokens of the best dot product."""
    return float((query @ doc.T).max(axis=1).sum())
