"""Which pooled vectors keep the true top 10 when they narrow the FDE candidates (numpy only).

    uv run python -m bench.pooling_bench [--pages 2000] [--queries 40] [--corpora regions hard]

On the search benchmark's synthetic corpora (real shapes: 747 tokens, 32 x 23 grid, 11 prompt
tokens), ranks every page by the dot product of MUVERA encodings (the first stage), keeps the
first K1, reorders them by exact MaxSim over each kind of pooled vectors (the middle stage) and
reports the share of the true top 10 (float32 MaxSim over every token) among the first K2: the
most the final rerank can recover. Also the cost of pooling a page. Kinds: unit-length row
means (the first stage of collections made before FDEs), SimHash buckets (ours), and
colpali-engine's ``HierarchicalTokenPooler`` at pool factors 8 and 16. No store is built: no
graph or quantization loss, only what each representation keeps.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

from bench.common import header, table
from bench.search_bench import CORPORA, maxsim_scores
from retrieval.muvera import Muvera
from retrieval.pooling import pool_buckets, pool_rows
from retrieval.types import PageEmbedding

_HTP = HierarchicalTokenPooler()


def _htp(page: PageEmbedding, factor: int) -> np.ndarray:
    tokens = torch.from_numpy(page.multivector)
    return _HTP.pool_embeddings([tokens], pool_factor=factor)[0].numpy()


POOLINGS = {
    "rows": lambda p: pool_rows(p.visual, p.special),
    "buckets": lambda p: pool_buckets(p.multivector),
    "HierarchicalTokenPooler 8": lambda p: _htp(p, 8),
    "HierarchicalTokenPooler 16": lambda p: _htp(p, 16),
}
FIRST = (800, 1600)
KEEP = (50, 100, 200)


def measure(corpus_name: str, pages: int, n_queries: int) -> list[list]:
    corpus, rng = CORPORA[corpus_name](), np.random.default_rng(123)
    queries = [corpus.query(int(rng.integers(0, pages)), rng) for _ in range(n_queries)]
    muvera = Muvera(queries[0].shape[1])
    query_fdes = np.stack([muvera.encode_query(q) for q in queries])
    scores = {k: np.empty((n_queries, pages), np.float32) for k in ("full", "fde", *POOLINGS)}
    cost = dict.fromkeys(POOLINGS, 0.0)
    count = dict.fromkeys(POOLINGS, 0)
    for first in range(0, pages, 64):
        chunk = [corpus.page(p) for p in range(first, min(pages, first + 64))]
        cut = slice(first, first + len(chunk))
        scores["full"][:, cut] = maxsim_scores(queries, [p.multivector for p in chunk])
        fdes = np.stack([muvera.encode_document(p.multivector) for p in chunk])
        scores["fde"][:, cut] = query_fdes @ fdes.T
        for name, pool in POOLINGS.items():
            start = time.perf_counter()
            pooled = [pool(p) for p in chunk]
            cost[name] += time.perf_counter() - start
            for j, vectors in enumerate(pooled):  # pooled pages differ in length: one at a time
                count[name] += len(vectors)
                scores[name][:, first + j] = maxsim_scores(queries, [vectors])[:, 0]
    truth = [set(np.argsort(-row)[:10]) for row in scores["full"]]

    def recall(ranked: np.ndarray, k: int) -> float:
        return float(
            np.mean([len(set(r[:k]) & t) / 10 for r, t in zip(ranked, truth, strict=True)])
        )

    by_fde = np.argsort(-scores["fde"], axis=1)
    rows = [
        [corpus_name, "FDE alone", "-", "-", *(f"{recall(by_fde, k):.3f}" for k in KEEP)]
        + [f"{recall(by_fde, k):.3f}" for k in FIRST]
    ]
    for name in POOLINGS:
        for k1 in FIRST:
            candidates = by_fde[:, :k1]
            order = np.argsort(-np.take_along_axis(scores[name], candidates, axis=1), axis=1)
            ranked = np.take_along_axis(candidates, order, axis=1)
            rows.append(
                [
                    corpus_name,
                    f"{name} (~{count[name] / pages:.0f} vectors)",
                    k1,
                    f"{cost[name] / pages * 1000:.1f}",
                    *(f"{recall(ranked, k):.3f}" for k in KEEP),
                    "-",
                    "-",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    args = parser.parse_args()
    rows = [r for c in args.corpora for r in measure(c, args.pages, args.queries)]
    print(header(f"Middle stages over FDE candidates, {args.pages} pages", "bench.pooling_bench"))
    keep = [f"true top 10 in first {k}" for k in KEEP]
    first = [f"FDE alone, first {k}" for k in FIRST]
    print(table(["corpus", "middle stage", "FDE candidates", "ms a page", *keep, *first], rows))


if __name__ == "__main__":
    main()
