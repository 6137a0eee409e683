"""Search latency, recall and footprint on the embedded backend, with the real shapes.

    uv run python -m bench.search_bench [--sizes 1000 10000 50000] [--queries 50]

Synthetic corpora: each page has 747 tokens x 128-d (4 prefix + 23 x 32 visual + 7 suffix, as
an A4 page under ColQwen2) and 43 row-pooled vectors (32 rows + 11 prompt tokens). Tokens are
drawn around "concepts" that vary by page region, so pooling and late interaction behave like
on real pages rather than on white noise; queries are built from one page's concepts. Reports
p50/p95 latency of two_stage and exact, recall@10 of two_stage against exact for several
prefetch sizes, and RAM and disk per page.
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
from retrieval.types import PageEmbedding, PageRecord

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


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


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


def run_size(
    n: int,
    n_queries: int,
    n_exact: int,
    prefetches: list[int],
    workdir: Path,
    float16: bool,
    keep: bool,
) -> dict:
    corpus = Corpus()
    path = workdir / f"store-{n}-{'f16' if float16 else 'f32'}"
    build_s = float("nan")
    if not (path / "bench").is_dir():  # reuse a store built by an earlier run in --workdir
        store = PageStore(EdgeBackend(path), float16=float16)
        store.create_collection("bench", model="synthetic", max_visual_tokens=768)
        build_s = build(store, corpus, n)
        store.close()
    # Reopen, as a server would after a restart.
    reopen_start = time.perf_counter()
    store = PageStore(EdgeBackend(path))
    store.count_pages("bench")
    reopen_s = time.perf_counter() - reopen_start
    rng = np.random.default_rng(123)
    queries = [corpus.query(int(rng.integers(0, n)), rng) for _ in range(n_queries)]
    for q in queries[:3]:  # warm caches
        store.search("bench", q, top_k=10, mode="two_stage")
    exact_ids, exact_ms = [], []
    for q in queries[:n_exact]:
        hits, ms = timed(lambda q=q: store.search("bench", q, top_k=10, mode="exact"))
        exact_ids.append([(h.doc_id, h.page) for h in hits])
        exact_ms.append(ms)
    results = {
        "n": n,
        "build_s": build_s,
        "reopen_s": reopen_s,
        "exact_ms": exact_ms,
        "two_stage": {},
    }
    for k in prefetches:
        times, recalls = [], []
        for i, q in enumerate(queries):
            hits, ms = timed(lambda q=q, k=k: store.search("bench", q, top_k=10, prefetch=k))
            times.append(ms)
            if i < n_exact:
                got = {(h.doc_id, h.page) for h in hits}
                recalls.append(len(got & set(exact_ids[i])) / len(exact_ids[i]))
        results["two_stage"][k] = (times, statistics.mean(recalls))
    results["disk_per_page_kb"] = du(path) / n / 1024
    store.close()
    results["ram_per_page_kb"] = ram_per_page_kb(path, n)
    if not keep:
        shutil.rmtree(path)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--exact-queries", type=int, default=20)
    parser.add_argument("--prefetch", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument(
        "--float32", action="store_true", help="store `original` as float32 (default float16)"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build the stores in --workdir, measure nothing"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the stores here and reuse them on the next run"
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp())
    workdir.mkdir(parents=True, exist_ok=True)
    rows_latency, rows_recall, rows_size = [], [], []
    if args.build_only:
        for n in args.sizes:
            path = workdir / f"store-{n}-{'f32' if args.float32 else 'f16'}"
            store = PageStore(EdgeBackend(path), float16=not args.float32)
            store.create_collection("bench", model="synthetic", max_visual_tokens=768)
            print(f"built {n} pages in {build(store, Corpus(), n):.0f} s", flush=True)
            store.close()
        return
    for n in args.sizes:
        r = run_size(
            n,
            args.queries,
            min(args.exact_queries, args.queries),
            args.prefetch,
            workdir,
            float16=not args.float32,
            keep=args.workdir is not None,
        )
        ex = r["exact_ms"]
        rows_latency.append(
            [n, "exact", "-", f"{percentile(ex, 50):.1f}", f"{percentile(ex, 95):.1f}"]
        )
        for k, (times, recall) in r["two_stage"].items():
            rows_latency.append(
                [n, "two_stage", k, f"{percentile(times, 50):.1f}", f"{percentile(times, 95):.1f}"]
            )
            rows_recall.append([n, k, f"{recall:.3f}"])
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
    dtype = "float32" if args.float32 else "float16"
    print(header(f"Search, embedded backend, `original` in {dtype}", "bench.search_bench"))
    print(table(["pages", "mode", "prefetch", "p50 ms", "p95 ms"], rows_latency))
    print()
    print(table(["pages", "prefetch", "recall@10 vs exact"], rows_recall))
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
