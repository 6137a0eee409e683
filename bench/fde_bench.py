"""Which MUVERA parameters rank the true top 10 best, at what size (numpy only).

    uv run python -m bench.fde_bench [--pages 2000] [--queries 60] [--corpora regions hard]

On the search benchmark's synthetic corpora, ranks every page by the dot product of its FDE with
the query's, for several (k_sim, dim_proj, r_reps), and reports the share of the true top 10
(float32 MaxSim over every token) among the first K: the FDE stage's ceiling, before any graph
or binary quantization. The default, (4, 32, 20), was chosen from this table.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import header, table
from bench.search_bench import CORPORA, maxsim_scores
from retrieval.muvera import FdeParams, Muvera

CHOICES = [  # (k_sim, dim_proj, r_reps): 10240-d ones first, then larger
    (5, 16, 20),  # fastembed's default
    (4, 32, 20),
    (6, 8, 20),
    (6, 16, 10),
    (6, 16, 20),
    (5, 16, 40),
    (7, 16, 20),
]
DEPTHS = (50, 100, 200, 400, 800)


def measure(corpus_name: str, pages: int, n_queries: int) -> list[list]:
    corpus, rng = CORPORA[corpus_name](), np.random.default_rng(321)
    queries = [corpus.query(int(rng.integers(0, pages)), rng) for _ in range(n_queries)]
    encoders = {c: Muvera(queries[0].shape[1], FdeParams(*c)) for c in CHOICES}
    query_fdes = {c: np.stack([m.encode_query(q) for q in queries]) for c, m in encoders.items()}
    scores = {k: np.empty((n_queries, pages), np.float32) for k in ("full", *CHOICES)}
    for first in range(0, pages, 64):
        chunk = [corpus.page(p).multivector for p in range(first, min(pages, first + 64))]
        cut = slice(first, first + len(chunk))
        scores["full"][:, cut] = maxsim_scores(queries, chunk)
        for c, muvera in encoders.items():
            fdes = np.stack([muvera.encode_document(p) for p in chunk])
            scores[c][:, cut] = query_fdes[c] @ fdes.T
    truth = [set(np.argsort(-row)[:10]) for row in scores["full"]]
    rows = []
    for c, muvera in encoders.items():
        ranked = np.argsort(-scores[c], axis=1)
        shares = [
            np.mean([len(set(r[:k]) & t) / 10 for r, t in zip(ranked, truth, strict=True)])
            for k in DEPTHS
        ]
        rows.append([corpus_name, str(c), muvera.size, *(f"{s:.3f}" for s in shares)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    args = parser.parse_args()
    rows = [r for c in args.corpora for r in measure(c, args.pages, args.queries)]
    print(header(f"FDE parameters, {args.pages} pages", "bench.fde_bench"))
    depths = [f"true top 10 in first {k}" for k in DEPTHS]
    print(table(["corpus", "(k_sim, dim_proj, r_reps)", "dimensions", *depths], rows))


if __name__ == "__main__":
    main()
