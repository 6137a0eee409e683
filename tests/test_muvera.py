"""Our MUVERA encodings against fastembed's (Qdrant's library, the oracle), and what they are
for: a dot product of FDEs that ranks pages as MaxSim does."""

from __future__ import annotations

import numpy as np
import pytest
from fastembed.postprocess.muvera import Muvera as FastembedMuvera

from retrieval.muvera import FdeParams, Muvera
from retrieval.pooling import pool_buckets, pool_clusters
from tests.fakes import maxsim, unit


@pytest.mark.parametrize(
    ("dim", "params"),
    [
        (128, FdeParams()),  # the default: 4 bits, 32-d projections, 20 repetitions
        (128, FdeParams(k_sim=5, dim_proj=16, r_reps=20, seed=42)),  # fastembed's default
        (64, FdeParams(k_sim=3, dim_proj=8, r_reps=7, seed=3)),
        (320, FdeParams(k_sim=6, dim_proj=32, r_reps=4, seed=11)),  # wider token vectors
        (16, FdeParams(k_sim=2, dim_proj=16, r_reps=3, seed=0)),  # no projection (dim_proj = dim)
    ],
)
def test_encodings_equal_fastembeds_on_the_same_seed(dim, params):
    ours = Muvera(dim, params)
    theirs = FastembedMuvera(dim, params.k_sim, params.dim_proj, params.r_reps, params.seed)
    assert ours.size == theirs.embedding_size
    rng = np.random.default_rng(dim)
    for n in (1, 2, 5, 30, 747):  # 1-2 tokens leave most buckets empty: the filling rule counts
        tokens = unit(rng.standard_normal((n, dim)))
        np.testing.assert_allclose(
            ours.encode_document(tokens), theirs.process_document(tokens), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            ours.encode_query(tokens), theirs.process_query(tokens), rtol=1e-5, atol=1e-6
        )


def test_fde_dot_products_rank_pages_like_maxsim():
    """The point of an FDE: pages that match a query by MaxSim match it by FDE dot product."""
    rng = np.random.default_rng(4)
    muvera = Muvera(128)
    topics = unit(rng.standard_normal((40, 128)))
    noise = 0.5 / np.sqrt(128)  # cosine ~0.9 to the token's topic
    pages = [
        unit(
            topics[rng.choice(40, 4)][rng.integers(0, 4, 300)]
            + noise * rng.standard_normal((300, 128))
        )
        for _ in range(200)
    ]
    fdes = np.stack([muvera.encode_document(p) for p in pages])
    found = 0
    for target in range(20):
        query = unit(pages[target][:8] + noise * rng.standard_normal((8, 128)))
        by_maxsim = np.argsort([-maxsim(query, p) for p in pages])[:5]
        by_fde = np.argsort(-(fdes @ muvera.encode_query(query)))[:20]  # a tenth of the pages
        found += len(set(by_maxsim) & set(by_fde))
    assert found / (20 * 5) >= 0.9


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="dim_proj"):
        Muvera(16, FdeParams(dim_proj=32))
    with pytest.raises(ValueError, match="non-empty"):
        Muvera(128).encode_query(np.zeros((0, 128), np.float32))
    with pytest.raises(ValueError, match="128"):
        Muvera(128).encode_document(np.zeros((3, 64), np.float32))


def test_bucket_pooling_keeps_one_unit_mean_per_group_of_similar_tokens():
    rng = np.random.default_rng(1)
    background = unit(rng.standard_normal(128))
    content = unit(rng.standard_normal((3, 128)))
    page = np.concatenate(
        [
            unit(background + 0.01 * rng.standard_normal((700, 128))),  # near-identical
            unit(np.repeat(content, 10, axis=0) + 0.01 * rng.standard_normal((30, 128))),
        ]
    )
    pooled = pool_buckets(page)
    assert pooled.dtype == np.float32 and pooled.shape[1] == 128
    assert len(pooled) <= 12  # 700 background tokens and 3 topics: a few groups, not 730
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1, atol=1e-5)
    # Each kind of token still has a pooled vector close to it: MaxSim against the pooled
    # page stays close to MaxSim against the page.
    for probe in (background, *content):
        assert (pooled @ probe).max() > 0.95
    np.testing.assert_array_equal(pool_buckets(page), pooled)  # deterministic


def test_clustered_pooling_gives_every_group_of_tokens_a_vector_of_its_own():
    """k-means centroids: each concept of a page keeps a vector close to it, where SimHash
    buckets (as many vectors) merge some of them; a query about any one concept scores the
    pooled page about as high as the page (a centroid is its tokens without their noise)."""
    rng = np.random.default_rng(3)
    concepts = unit(rng.standard_normal((24, 128)))
    page = unit(concepts[rng.integers(0, 24, 747)] + 0.05 * rng.standard_normal((747, 128)))
    clustered = pool_clusters(page)
    assert clustered.dtype == np.float32 and clustered.shape == (len(clustered), 128)
    assert len(clustered) <= 64
    np.testing.assert_allclose(np.linalg.norm(clustered, axis=1), 1, atol=1e-5)
    closest = (concepts @ clustered.T).max(axis=1)  # each concept's best centroid
    assert closest.min() > 0.95
    assert closest.min() > (concepts @ pool_buckets(page).T).max(axis=1).min()
    for concept in concepts[:5]:
        query = unit(concept + 0.3 * rng.standard_normal((4, 128)) / np.sqrt(128))
        assert maxsim(query, clustered) >= 0.95 * maxsim(query, page)
    np.testing.assert_array_equal(pool_clusters(page), clustered)  # deterministic
    assert pool_clusters(page[:5]).shape[0] <= 5  # fewer tokens than clusters
    with pytest.raises(ValueError, match="non-empty"):
        pool_clusters(np.zeros((0, 128), np.float32))
