"""How well the pooled vectors find the true top 10: raw means vs unit-length means.

    uv run python -m bench.pooling_bench [--pages 5000] [--queries 40]

On the search benchmark's synthetic corpus (real shapes: 747 tokens, 32 x 23 grid, 11 prompt
tokens), ranks every page by exact MaxSim over its row-pooled vectors, pooled both ways, and
reports the share of the true top 10 (float32 MaxSim over every token) among the first k pages:
the most a first stage of size k can give to the rerank, with no HNSW graph in the way. Pure
numpy: no store is built.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import header, table
from bench.search_bench import Corpus, maxsim_scores
from retrieval.pooling import pool_rows

PREFETCH = (25, 50, 100, 200, 400)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=40)
    args = parser.parse_args()
    corpus, rng = Corpus(), np.random.default_rng(123)
    queries = [corpus.query(int(rng.integers(0, args.pages)), rng) for _ in range(args.queries)]
    scores = {name: np.empty((args.queries, args.pages), np.float32) for name in ("full", *"ru")}
    chunk = 64
    for first in range(0, args.pages, chunk):
        pages = [corpus.page(p) for p in range(first, min(args.pages, first + chunk))]
        cut = slice(first, first + len(pages))
        scores["full"][:, cut] = maxsim_scores(queries, [p.multivector for p in pages])
        for name, unit in (("r", False), ("u", True)):
            pooled = [pool_rows(p.visual, p.special, normalize=unit) for p in pages]
            scores[name][:, cut] = maxsim_scores(queries, pooled)
    truth = [set(np.argsort(-row)[:10]) for row in scores["full"]]

    def recall(name: str, k: int) -> float:
        top = np.argsort(-scores[name], axis=1)[:, :k]
        return float(np.mean([len(set(t) & s) / 10 for t, s in zip(top, truth, strict=True)]))

    print(header(f"First-stage ceiling, {args.pages} pages", "bench.pooling_bench"))
    rows = [[k, f"{recall('r', k):.3f}", f"{recall('u', k):.3f}"] for k in PREFETCH]
    print(table(["prefetch", "raw means", "unit-length means"], rows))


if __name__ == "__main__":
    main()
