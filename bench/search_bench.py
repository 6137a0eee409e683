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
from retrieval.muvera import FdeParams
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


N_TOPICS, TOPIC_CONCEPTS, BACKGROUNDS = 150, 24, 3


class HardCorpus(Corpus):
    """Pages as real ones are: mostly background, in topical clusters, some near-duplicates.

    Per page ~85% of the patches are one of three near-identical background vectors (white page,
    grey band, margin); the content is 6 blocks of 1-3 rows x 3-10 columns, each one concept of
    the page's topic (150 topics of 24 concepts, so pages of a topic share their vocabulary);
    5% of pages are a noisy copy of an earlier page. A query is 14 tokens about 3 of the
    target page's concepts and 6 generic tokens that look like background, as stop words do.
    Row means dilute each block by the background around it, which is where pooling fails.
    """

    def __init__(self, seed: int = 1) -> None:
        super().__init__(seed)
        rng = np.random.default_rng(seed + 1)
        self.concepts = unit(rng.standard_normal((N_TOPICS * TOPIC_CONCEPTS, DIM)))
        self.background = unit(rng.standard_normal((BACKGROUNDS, DIM)))
        generic = 0.5 * self.background[0] + 0.5 * unit(rng.standard_normal((6, DIM)))
        self.generic = unit(generic)

    def _source(self, page: int) -> int:
        rng = np.random.default_rng(20_000_003 + page)
        return int(rng.integers(0, page)) if page > 0 and rng.random() < 0.05 else page

    def page_concepts(self, page: int) -> np.ndarray:
        """(6,) concepts of the page's blocks, and their rectangles (6, 4): row, col, h, w."""
        rng = np.random.default_rng(30_000_001 + self._source(page))
        topic = int(rng.integers(0, N_TOPICS))
        return topic * TOPIC_CONCEPTS + rng.choice(TOPIC_CONCEPTS, size=6, replace=False)

    def _blocks(self, page: int) -> np.ndarray:
        rng = np.random.default_rng(40_000_003 + self._source(page))
        h, w = rng.integers(1, 4, size=6), rng.integers(3, 11, size=6)
        return np.stack([rng.integers(0, ROWS - h + 1), rng.integers(0, COLS - w + 1), h, w], 1)

    def page(self, page: int) -> PageEmbedding:
        rng = np.random.default_rng(page)
        grid = np.where(np.arange(COLS) < 2, 2, 0)[None, :].repeat(ROWS, 0)  # margins
        grid[rng.integers(0, ROWS, size=3)] = 1  # a few grey bands
        centers = self.background[grid]  # (ROWS, COLS, DIM)
        noise = np.full((ROWS, COLS, 1), 0.3)
        for concept, (r, c, h, w) in zip(self.page_concepts(page), self._blocks(page), strict=True):
            centers[r : r + h, c : c + w] = self.concepts[concept]
            noise[r : r + h, c : c + w] = 0.6
        visual = unit(centers + noise * rng.standard_normal((ROWS, COLS, DIM)) / np.sqrt(DIM))
        special = unit(self.prompt + 0.1 * rng.standard_normal(self.prompt.shape))
        tokens = np.concatenate([special[:PREFIX], visual.reshape(-1, DIM), special[PREFIX:]])
        return PageEmbedding(tokens, (ROWS, COLS), visual, special)

    def query(self, target_page: int, rng: np.random.Generator) -> np.ndarray:
        chosen = rng.choice(self.page_concepts(target_page), size=3, replace=False)
        words = self.concepts[np.repeat(chosen, 5)[:14]]
        words = unit(words + 0.8 * rng.standard_normal(words.shape) / np.sqrt(DIM))
        return np.concatenate([words, self.generic])  # (20, DIM)


COMMON_WORDS, DENSE_TOPICS, DENSE_TOPIC_WORDS = 2_000, 300, 200
VOCABULARY = COMMON_WORDS + DENSE_TOPICS * DENSE_TOPIC_WORDS


class DenseCorpus(Corpus):
    """Pages of dense text and tables: every patch its own content, little background.

    A page is 32 lines of text between two narrow margins; each line is a run of "words" of 1-3
    patches, each patch its word's vector plus its own noise (the parts of a word differ). 60% of
    words are common ones (a Zipf draw from 2,000 shared by all pages), 40% from the page's topic
    (300 topics of 200 words); 30% of pages hold a table of 8 rows whose cells are numbers (100
    "digit" vectors shared by every table). 5% of pages are noisy copies of earlier ones. A query
    is 12 tokens about 3 topical words of the target page, 3 common words and 5 generic tokens.
    Bucket means mix many words here, and the FDE sees a page of ~700 distinct tokens: the
    corpus that is hardest for every cheap stage.
    """

    def __init__(self, seed: int = 3) -> None:
        super().__init__(seed)
        rng = np.random.default_rng(seed + 1)
        self.words = unit(rng.standard_normal((VOCABULARY, DIM)))
        self.digits = unit(rng.standard_normal((100, DIM)))
        self.background = unit(rng.standard_normal((1, DIM)))
        self.generic = unit(0.5 * self.background[0] + 0.5 * rng.standard_normal((5, DIM)))
        ranks = np.arange(1, COMMON_WORDS + 1)
        self.zipf = (1 / ranks) / (1 / ranks).sum()

    def _source(self, page: int) -> int:
        rng = np.random.default_rng(50_000_017 + page)
        return int(rng.integers(0, page)) if page > 0 and rng.random() < 0.05 else page

    def _layout(self, page: int) -> tuple[np.ndarray, np.ndarray]:
        """(ROWS, COLS - 2) word ids of the text area, and its topic words."""
        rng = np.random.default_rng(60_000_011 + self._source(page))
        topic = int(rng.integers(0, DENSE_TOPICS))
        topical = COMMON_WORDS + topic * DENSE_TOPIC_WORDS + np.arange(DENSE_TOPIC_WORDS)
        width = COLS - 2
        spans = rng.integers(1, 4, size=(ROWS, width))  # more words than a line holds
        common = rng.choice(COMMON_WORDS, size=(ROWS, width), p=self.zipf)
        words = np.where(
            rng.random((ROWS, width)) < 0.6, common, rng.choice(topical, (ROWS, width))
        )
        ids = np.stack([np.repeat(w, n)[:width] for w, n in zip(words, spans, strict=True)])
        if rng.random() < 0.3:  # a table: numbers in cells
            top = int(rng.integers(0, ROWS - 8))
            ids[top : top + 8] = -1 - rng.integers(0, 100, size=(8, width))
        return ids, topical

    def page_concepts(self, page: int) -> np.ndarray:
        ids, topical = self._layout(page)
        on_page = np.unique(ids[ids >= COMMON_WORDS])
        return on_page if len(on_page) >= 3 else topical[:3]

    def page(self, page: int) -> PageEmbedding:
        rng = np.random.default_rng(page)
        ids, _ = self._layout(page)
        text = np.where(
            ids[..., None] >= 0,
            self.words[np.maximum(ids, 0)],
            self.digits[-1 - np.minimum(ids, -1)],
        )
        centers = np.concatenate(
            [
                np.repeat(self.background[None], ROWS, 0),
                text,
                np.repeat(self.background[None], ROWS, 0),
            ],
            axis=1,
        )  # (ROWS, COLS, DIM)
        visual = unit(centers + 0.7 * rng.standard_normal((ROWS, COLS, DIM)) / np.sqrt(DIM))
        special = unit(self.prompt + 0.1 * rng.standard_normal(self.prompt.shape))
        tokens = np.concatenate([special[:PREFIX], visual.reshape(-1, DIM), special[PREFIX:]])
        return PageEmbedding(tokens, (ROWS, COLS), visual, special)

    def query(self, target_page: int, rng: np.random.Generator) -> np.ndarray:
        topical = rng.choice(self.page_concepts(target_page), size=3, replace=False)
        common = rng.choice(COMMON_WORDS, size=3, p=self.zipf)
        words = self.words[np.concatenate([np.repeat(topical, 4), common])]  # (15, DIM)
        words = unit(words + 0.8 * rng.standard_normal(words.shape) / np.sqrt(DIM))
        return np.concatenate([words, self.generic])  # (20, DIM)


CORPORA = {"regions": Corpus, "hard": HardCorpus, "dense": DenseCorpus}


def build(store: PageStore, corpus: Corpus, pages: range, batch: int = 256) -> tuple[float, float]:
    """Upsert ``pages``, then index them: (upload s, index s)."""
    start = time.perf_counter()
    for first in range(pages.start, pages.stop, batch):
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
            for p in range(first, min(pages.stop, first + batch))
        ]
        store.upsert_pages("bench", records)
    store.flush("bench")
    uploaded = time.perf_counter()
    store.optimize("bench")
    return uploaded - start, time.perf_counter() - uploaded


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
from bench.search_bench import CORPORA, rss_mb
from retrieval.store import PageStore
from retrieval.store.edge import EdgeBackend
before = rss_mb("RssAnon"), rss_mb("RssFile")
store = PageStore(EdgeBackend(Path(sys.argv[1])))
corpus, rng = CORPORA[sys.argv[3]](), np.random.default_rng(7)
for _ in range(20):
    store.search("bench", corpus.query(int(rng.integers(0, int(sys.argv[2]))), rng), top_k=10)
print(rss_mb("RssAnon") - before[0], rss_mb("RssFile") - before[1])
"""


def ram_per_page_kb(path: Path, n: int, corpus: str) -> tuple[float, float]:
    """Memory a fresh process adds by opening the store and serving two-stage queries:
    (anonymous, file-backed) KB per page."""
    out = subprocess.run(
        [sys.executable, "-c", RAM_PROBE, str(path), str(n), corpus],
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


# The first stages compared. "rows-graph" is the schema before FDEs, with the faster-building
# ef_construct 32 that the 50k-page measurement used.
CONFIGS = {
    "rows-graph": {"first_stage": "rows", "pooling": ("rows",), "hnsw_ef_construct": 32},
    "fde": {"first_stage": "fde", "pooling": ()},
    "fde+rows": {"first_stage": "fde", "pooling": ("rows",)},
    "fde+buckets": {"first_stage": "fde", "pooling": ("buckets",)},
}


def open_store(path: Path, args: argparse.Namespace, config: str | None = None) -> PageStore:
    """The store at ``path``; created with ``config``'s schema when given."""
    schema = dict(CONFIGS[config]) if config else {}
    pooling = schema.pop("pooling", ("rows",))
    store = PageStore(
        EdgeBackend(path),
        original_dtype=args.dtype,
        fde=FdeParams(*args.fde),
        fde_binary=None if args.binary == "none" else args.binary,
        pooled_dtype=args.pooled_dtype,
        **schema,
    )
    if config:
        store.create_collection("bench", model="synthetic", max_visual_tokens=768, pooling=pooling)
    return store


def store_path(workdir: Path, corpus: str, n: int, config: str, args) -> Path:
    fde = "" if config == "rows-graph" else "-fde" + "x".join(map(str, args.fde)) + args.binary
    pooled = f"-{args.pooled_dtype}" if "+" in config else ""
    return workdir / f"{corpus}-{n}-{config}-{args.dtype}{fde}{pooled}"


def run(corpus_name: str, n: int, config: str, args: argparse.Namespace, workdir: Path) -> list:
    """Build (or reuse) one store and measure it: rows of the latency and size tables."""
    corpus = CORPORA[corpus_name]()
    path = store_path(workdir, corpus_name, n, config, args)
    upload_s = index_s = float("nan")
    if not (path / "bench").is_dir() and not (path / "bench__v2").is_dir():
        store = open_store(path, args, config)
        upload_s, index_s = build(store, corpus, range(n))
        store.close()
        print(f"built {corpus_name} {n} {config}: {upload_s:.0f} + {index_s:.0f} s", flush=True)
    store = open_store(path, args)  # reopened, as after a restart
    rng = np.random.default_rng(123)
    queries = [corpus.query(int(rng.integers(0, n)), rng) for _ in range(args.queries)]
    truth = brute_force_top10(corpus, n, queries[: args.recall_queries])

    def recall(hits: list, i: int) -> float:
        return len({f"{h.doc_id}:{h.page}" for h in hits} & truth[i]) / 10

    for q in queries:  # warm the page cache, as a serving process would be
        store.search("bench", q, top_k=10, prefetch=max(args.prefetch))
    latency = []
    middle = bool(store.collection("bench").pooling) and config != "rows-graph"
    for oversampling in args.oversampling if config != "rows-graph" else [None]:
        store.oversampling = oversampling
        for limit in args.first_stage_limit if middle else [None]:
            store.first_stage_limit = limit or 0
            for k in args.prefetch:
                first_ms, first_recall, times, recalls = [], [], [], []
                for i, q in enumerate(queries):
                    # The first stage alone: the candidates the next stage would see.
                    if not args.skip_first_stage:
                        depth = limit or k
                        hits, ms = timed(
                            lambda q=q, d=depth: store.search("bench", q, top_k=d, mode="pooled")
                        )
                        first_ms.append(ms)
                        if i < len(truth):
                            first_recall.append(recall(hits, i))
                    hits, ms = timed(
                        lambda q=q, k=k: store.search("bench", q, top_k=10, prefetch=k)
                    )
                    times.append(ms)
                    if i < len(truth):
                        recalls.append(recall(hits, i))
                latency.append(
                    [
                        corpus_name,
                        n,
                        config,
                        oversampling or "-",
                        limit or "-",
                        k,
                        pct(first_ms, 50) if first_ms else "-",
                        f"{statistics.mean(first_recall):.3f}" if first_recall else "-",
                        pct(times, 50),
                        pct(times, 95),
                        f"{statistics.mean(recalls):.3f}",
                    ]
                )
                print(" | ".join(map(str, latency[-1])), flush=True)
    exact_ms = [
        timed(lambda q=q: store.search("bench", q, top_k=10, mode="exact"))[1]
        for q in queries[: args.exact_queries]
    ]
    disk = du(path) / n / 1024
    grow = "-"
    if args.grow and config != "rows-graph":
        # New pages in an indexed collection: searchable at once, indexed in seconds.
        upload, index = build(store, corpus, range(n, n + args.grow))
        probe = corpus.query(n + args.grow - 1, np.random.default_rng(5))
        hits = store.search("bench", probe, top_k=10)
        found = any(h.doc_id == f"doc{(n + args.grow - 1) // 50}" for h in hits)
        # ... and deleted again (the store stays as built, for the next run in --workdir).
        start = time.perf_counter()
        for doc in range(n // 50, (n + args.grow - 1) // 50 + 1):
            store.delete_pages("bench", f"doc{doc}")
        store.flush("bench")
        store.optimize("bench")
        gone = store.count_pages("bench") == n
        grow = (
            f"{upload:.1f} + {index:.1f} s (a new page found: {found}); deleted again in "
            f"{time.perf_counter() - start:.1f} s (count back to {n}: {gone})"
        )
    store.close()
    anon, mapped = ram_per_page_kb(path, n, corpus_name)
    size = [
        corpus_name,
        n,
        config,
        f"{upload_s:.0f}",
        f"{index_s:.0f}",
        f"{disk:.0f}",
        f"{anon:.1f}",
        f"{mapped:.1f}",
        pct(exact_ms, 50) if exact_ms else "-",
        grow,
    ]
    if args.workdir is None:
        shutil.rmtree(path)
    return latency, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--queries", type=int, default=40, help="timed queries")
    parser.add_argument(
        "--recall-queries", type=int, default=40, help="queries scored against the oracle"
    )
    parser.add_argument(
        "--exact-queries", type=int, default=1, help="timed exact queries (~1 ms a page each)"
    )
    parser.add_argument("--prefetch", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument(
        "--first-stage-limit",
        type=int,
        nargs="+",
        default=[200, 400, 800],
        help="FDE candidates the pooled middle stage narrows (fde+rows, fde+buckets)",
    )
    parser.add_argument("--oversampling", type=float, nargs="+", default=[4.0])
    parser.add_argument(
        "--fde", type=int, nargs=3, default=[4, 32, 20], metavar=("K_SIM", "DIM_PROJ", "R_REPS")
    )
    parser.add_argument("--binary", choices=["1", "1.5", "2", "none"], default="1")
    parser.add_argument(
        "--dtype", choices=DATATYPES, default="float16", help="storage of `original`"
    )
    parser.add_argument(
        "--pooled-dtype", choices=DATATYPES, default="turbo8", help="storage of the middle stage"
    )
    parser.add_argument(
        "--grow", type=int, default=1000, help="pages added to the indexed store at the end"
    )
    parser.add_argument(
        "--skip-first-stage",
        action="store_true",
        help="time two_stage only (the first stage alone, with payloads, is slow to measure)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the stores here and reuse them on the next run"
    )
    args = parser.parse_args()
    args.recall_queries = min(args.recall_queries, args.queries)
    workdir = args.workdir or Path(tempfile.mkdtemp())
    workdir.mkdir(parents=True, exist_ok=True)
    latency, sizes = [], []
    for corpus in args.corpora:
        for n in args.sizes:
            for config in args.configs:
                rows, size = run(corpus, n, config, args, workdir)
                latency += rows
                sizes.append(size)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    title = f"Search, embedded backend, `original` in {args.dtype}, FDE {args.fde}"
    title += f" binary {args.binary}, pooled vectors in {args.pooled_dtype}"
    print(header(title, "bench.search_bench"))
    print(
        table(
            [
                "corpus",
                "pages",
                "first stage",
                "oversampling",
                "FDE candidates",
                "prefetch",
                "first stage p50 ms",
                "candidate recall",
                "two_stage p50 ms",
                "p95 ms",
                "recall@10",
            ],
            latency,
        )
    )
    print()
    print(
        table(
            [
                "corpus",
                "pages",
                "first stage",
                "upload s",
                "index s",
                "disk KB/page",
                "heap KB/page",
                "mmap'd KB/page",
                "exact p50 ms",
                "+1000 pages: upload + index; their deletion",
            ],
            sizes,
        )
    )


if __name__ == "__main__":
    main()
