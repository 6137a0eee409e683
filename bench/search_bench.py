"""Search latency, recall and footprint on the embedded backend, with the real shapes.

    uv run python -m bench.search_bench [--sizes 1000 10000 50000] [--queries 50]
        [--dtype float16] [--ef-construct 100] [--m 16] [--workdir DIR [--build-only]]

Synthetic corpora: each page has 747 tokens x 128-d (4 prefix + 23 x 32 visual + 7 suffix, as
an A4 page under ColQwen2) and 43 row-pooled vectors (32 rows + 11 prompt tokens). Tokens are
drawn around "concepts" that vary by page region, so pooling and late interaction behave like
on real pages rather than on white noise; queries are built from one page's concepts. Reports
p50/p95 latency of two_stage and exact; for each prefetch size the first stage's own latency and
candidate recall (share of the true top 10 among its candidates; also for an exact scan of the
pooled vectors, the most any HNSW graph could give) and recall@10 of two_stage, against an
independent oracle (float32 MaxSim over every page in numpy); build time, RAM and disk per page.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import header, table
from retrieval.store import PageStore
from retrieval.store.edge import EdgeBackend
from retrieval.types import DATATYPES, PageEmbedding, PageRecord

ROWS, COLS, PREFIX, SUFFIX, DIM = 32, 23, 4, 7, 128
N_CONCEPTS = 2048


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


class Corpus:
    """Deterministic synthetic pages and queries."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.concepts = unit(rng.standard_normal((N_CONCEPTS, DIM)))
        self.prompt = unit(rng.standard_normal((PREFIX + SUFFIX, DIM)))
        self.augment = unit(rng.standard_normal((10, DIM)))

    def page_concepts(self, page: int) -> np.ndarray:
        """Per page 8 regions of 4 rows each, each region built from 3 concepts."""
        rng = np.random.default_rng(10_000_019 + page)
        return rng.integers(0, N_CONCEPTS, size=(8, 3))

    def page(self, page: int) -> PageEmbedding:
        rng = np.random.default_rng(page)
        concepts = self.page_concepts(page)
        region = np.repeat(np.arange(8), ROWS // 8)  # row -> region
        pick = rng.integers(0, 3, size=(ROWS, COLS))
        centers = self.concepts[concepts[region[:, None], pick]]  # (ROWS, COLS, DIM)
        # Token = its concept plus noise of norm ~0.6: cosine to the concept ~0.85.
        visual = unit(centers + 0.6 * rng.standard_normal((ROWS, COLS, DIM)) / np.sqrt(DIM))
        special = unit(self.prompt + 0.1 * rng.standard_normal(self.prompt.shape))
        tokens = np.concatenate([special[:PREFIX], visual.reshape(-1, DIM), special[PREFIX:]])
        return PageEmbedding(tokens, (ROWS, COLS), visual, special)

    def query(self, target_page: int, rng: np.random.Generator) -> np.ndarray:
        concepts = self.page_concepts(target_page)
        chosen = concepts[rng.integers(0, 8, size=3), rng.integers(0, 3, size=3)]
        words = self.concepts[np.repeat(chosen, 5)]  # 15 "word" tokens about 3 concepts
        words = unit(words + 0.8 * rng.standard_normal(words.shape) / np.sqrt(DIM))
        return np.concatenate([words, self.augment])  # (25, DIM)


def build(store: PageStore, corpus: Corpus, n: int, batch: int = 256) -> float:
    start = time.perf_counter()
    for first in range(0, n, batch):
        records = [
            PageRecord(
                f"doc{p // 50}",
                f"doc{p // 50}.pdf",
                p % 50 + 1,
                50,
                (595.0, 842.0),
                0,
                (644, 896),
                corpus.page(p),
            )
            for p in range(first, min(n, first + batch))
        ]
        store.upsert_pages("bench", records)
    store.optimize("bench")
    return time.perf_counter() - start


def du(path: Path) -> int:
    """Bytes actually allocated (WAL segments are preallocated sparse files)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def rss_mb(kind: str = "RssAnon") -> float:
    """Resident memory in MB: RssAnon (heap: must be RAM) or RssFile (mmap'd files: page cache)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(kind + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn) -> tuple[list, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.1f}"


RAM_PROBE = """
import sys, numpy as np
from pathlib import Path
from bench.search_bench import Corpus, rss_mb
from retrieval.store import PageStore
from retrieval.store.edge import EdgeBackend
before = rss_mb("RssAnon"), rss_mb("RssFile")
store = PageStore(EdgeBackend(Path(sys.argv[1])))
corpus, rng = Corpus(), np.random.default_rng(7)
for _ in range(20):
    store.search("bench", corpus.query(int(rng.integers(0, int(sys.argv[2]))), rng), top_k=10)
print(rss_mb("RssAnon") - before[0], rss_mb("RssFile") - before[1])
"""


def ram_per_page_kb(path: Path, n: int) -> tuple[float, float]:
    """Memory a fresh process adds by opening the store and serving two-stage queries:
    (anonymous, file-backed) KB per page."""
    out = subprocess.run(
        [sys.executable, "-c", RAM_PROBE, str(path), str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    anon, file = map(float, out.stdout.split()[-2:])
    return anon * 1024 / n, file * 1024 / n


def maxsim_scores(queries: list[np.ndarray], pages: list[np.ndarray]) -> np.ndarray:
    """(n_queries, n_pages) float32 MaxSim of every query against every page; the pages must
    all have the same number of vectors."""
    stacked = np.concatenate(queries)  # (sum of query tokens, DIM)
    bounds = np.cumsum([0] + [len(q) for q in queries])[:-1]
    sims = stacked @ np.concatenate(pages).T  # (tokens, pages x vectors)
    per_page = sims.reshape(len(stacked), len(pages), -1).max(axis=2)  # (tokens, pages)
    return np.add.reduceat(per_page, bounds, axis=0)


def brute_force_top10(corpus: Corpus, n: int, queries: list[np.ndarray]) -> list[set]:
    """The oracle: float32 MaxSim of every query against every page, in one pass over the
    corpus (pages are regenerated in chunks, so memory stays flat at any size)."""
    scores = np.empty((len(queries), n), dtype=np.float32)
    chunk = 64
    for first in range(0, n, chunk):
        pages = [corpus.page(p).multivector for p in range(first, min(n, first + chunk))]
        scores[:, first : first + len(pages)] = maxsim_scores(queries, pages)
    return [{f"doc{p // 50}:{p % 50 + 1}" for p in np.argsort(-row)[:10]} for row in scores]


def store_name(n: int, dtype: str, m: int, ef_construct: int) -> str:
    name = f"store-{n}-{dtype.replace('float', 'f')}"
    return name if (m, ef_construct) == (16, 100) else f"{name}-m{m}-ef{ef_construct}"


def open_new(path: Path, dtype: str, m: int, ef_construct: int) -> PageStore:
    store = PageStore(
        EdgeBackend(path), original_dtype=dtype, hnsw_m=m, hnsw_ef_construct=ef_construct
    )
    store.create_collection("bench", model="synthetic", max_visual_tokens=768)
    return store


def run_size(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    corpus = Corpus()
    path = workdir / store_name(n, args.dtype, args.m, args.ef_construct)
    build_s = float("nan")
    if not (path / "bench").is_dir():  # reuse a store built by an earlier run in --workdir
        store = open_new(path, args.dtype, args.m, args.ef_construct)
        build_s = build(store, corpus, n)
        store.close()
    # Reopen, as a server would after a restart.
    reopen_start = time.perf_counter()
    store = PageStore(EdgeBackend(path))
    store.count_pages("bench")
    reopen_s = time.perf_counter() - reopen_start
    rng = np.random.default_rng(123)
    queries = [corpus.query(int(rng.integers(0, n)), rng) for _ in range(args.queries)]
    truth = brute_force_top10(corpus, n, queries[: args.recall_queries])

    def recall(hits: list, i: int) -> float:
        return len({f"{h.doc_id}:{h.page}" for h in hits} & truth[i]) / 10

    for q in queries[:3]:  # warm caches
        store.search("bench", q, top_k=10, mode="two_stage")
    exact_ms, exact_recall = [], []
    for i, q in enumerate(queries[: args.exact_queries]):
        hits, ms = timed(lambda q=q: store.search("bench", q, top_k=10, mode="exact"))
        exact_ms.append(ms)
        if i < len(truth):
            exact_recall.append(recall(hits, i))
    # Ceiling of the first stage: exact MaxSim over the pooled vectors (no HNSW), ranked once.
    ceiling = []
    for q in queries[: len(truth)]:
        records = store.backend.query(
            "bench", q, using="rows", limit=max(args.prefetch), exact=True
        )
        ceiling.append([f"{r.payload['doc_id']}:{r.payload['page']}" for r in records])
    results = {
        "n": n,
        "build_s": build_s,
        "reopen_s": reopen_s,
        "exact": (exact_ms, statistics.mean(exact_recall) if exact_recall else float("nan")),
        "two_stage": {},
    }
    for k in args.prefetch:
        first_ms, first_recall, times, recalls = [], [], [], []
        for i, q in enumerate(queries):
            # First stage alone: the k candidates the rerank would see.
            hits, ms = timed(lambda q=q, k=k: store.search("bench", q, top_k=k, mode="pooled"))
            first_ms.append(ms)
            if i < len(truth):
                first_recall.append(recall(hits, i))
            hits, ms = timed(lambda q=q, k=k: store.search("bench", q, top_k=10, prefetch=k))
            times.append(ms)
            if i < len(truth):
                recalls.append(recall(hits, i))
        results["two_stage"][k] = {
            "ceiling": statistics.mean(
                len(set(c[:k]) & t) / 10 for c, t in zip(ceiling, truth, strict=True)
            ),
            "first_ms": first_ms,
            "candidate_recall": statistics.mean(first_recall),
            "ms": times,
            "recall": statistics.mean(recalls),
        }
    results["disk_per_page_kb"] = du(path) / n / 1024
    store.close()
    results["ram_per_page_kb"] = ram_per_page_kb(path, n)
    if args.workdir is None:
        shutil.rmtree(path)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--queries", type=int, default=50, help="timed two_stage queries")
    parser.add_argument(
        "--recall-queries", type=int, default=20, help="queries scored against the oracle"
    )
    parser.add_argument(
        "--exact-queries", type=int, default=5, help="timed exact queries (~1 ms a page each)"
    )
    parser.add_argument("--prefetch", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument(
        "--dtype", choices=DATATYPES, default="float16", help="storage of `original`"
    )
    parser.add_argument("--m", type=int, default=16, help="HNSW degree of the pooled vectors")
    parser.add_argument(
        "--ef-construct", type=int, default=100, help="HNSW build beam of the pooled vectors"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build the stores in --workdir, measure nothing"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the stores here and reuse them on the next run"
    )
    args = parser.parse_args()
    args.recall_queries = min(args.recall_queries, args.queries)
    workdir = args.workdir or Path(tempfile.mkdtemp())
    workdir.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        for n in args.sizes:
            store = open_new(
                workdir / store_name(n, args.dtype, args.m, args.ef_construct),
                args.dtype,
                args.m,
                args.ef_construct,
            )
            print(f"built {n} pages in {build(store, Corpus(), n):.0f} s", flush=True)
            store.close()
        return
    rows_latency, rows_size = [], []
    for n in args.sizes:
        r = run_size(n, args, workdir)
        ex, ex_recall = r["exact"]
        rows_latency.append(
            [n, "exact", "-", "-", "-", "-", f"{pct(ex, 50)}", f"{pct(ex, 95)}", f"{ex_recall:.3f}"]
        )
        for k, t in r["two_stage"].items():
            rows_latency.append(
                [
                    n,
                    "two_stage",
                    k,
                    pct(t["first_ms"], 50),
                    f"{t['candidate_recall']:.3f}",
                    f"{t['ceiling']:.3f}",
                    pct(t["ms"], 50),
                    pct(t["ms"], 95),
                    f"{t['recall']:.3f}",
                ]
            )
        rows_size.append(
            [
                n,
                f"{r['disk_per_page_kb']:.0f}",
                f"{r['ram_per_page_kb'][0]:.1f}",
                f"{r['ram_per_page_kb'][1]:.1f}",
                f"{r['build_s']:.0f}",
                f"{r['reopen_s']:.2f}",
            ]
        )
        print(f"done {n}", flush=True)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    title = f"Search, embedded backend, `original` in {args.dtype}, HNSW m={args.m} "
    print(header(title + f"ef_construct={args.ef_construct}", "bench.search_bench"))
    print(
        table(
            [
                "pages",
                "mode",
                "prefetch",
                "first stage p50 ms",
                "candidate recall",
                "same, exact pooled",
                "p50 ms",
                "p95 ms",
                "recall@10",
            ],
            rows_latency,
        )
    )
    print()
    print(
        table(
            [
                "pages",
                "disk KB/page",
                "heap KB/page",
                "mmap'd KB/page (page cache)",
                "build s",
                "reopen s",
            ],
            rows_size,
        )
    )


if __name__ == "__main__":
    main()
