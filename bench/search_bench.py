"""Search latency, recall and footprint on the embedded backend, measured as users meet them.

    uv run python -m bench.search_bench [--sizes 10000 50000] [--corpora regions hard dense]
        [--configs fde+clusters fde+buckets] [--queries 30] [--workdir DIR]

Synthetic corpora with the real shapes: each page has 747 tokens x 128-d (4 prefix + 23 x 32
visual + 7 suffix, as an A4 page under ColQwen2). ``regions``: tokens from 24 concepts spread
over the page; ``hard``: mostly background, content in small blocks, topical clusters,
near-duplicates; ``dense``: text and tables, every patch its own content (see each class).

For each corpus, size and store layout (``--configs``), one run:

1. **Build**: upload precomputed pages (the time spent in ``PageStore.upsert_pages``: derived
   vectors, BM25-free points, the engine's writes; generating the synthetic pages is not
   counted), then the index build. Reused from ``--workdir`` when it holds the store.
2. **Reopened** and **evicted**: a fresh process opens the store, starts its background
   warm-up as the service does, and runs the first ``--queries`` queries at once: first query,
   p50, p95. Reopened: the store's files as the page cache holds them (after the build and the
   oracle; this VM's memory manager drops pages idle for a minute). Evicted: every file of the
   store dropped from the page cache first (``posix_fadvise``), as after a reboot.
3. **Warm**: this process, every query run once before; p50 / p95 for each depth swept.
4. **Loaded**: warm queries while two other processes keep both cores busy (as an ingest
   beside the service does).

Every query reports its stages (the query's FDE, the FDE graph, the pooled middle stage, the
rerank by the full multivectors, and the rest: payloads, Python, the engine's own overhead);
tables give their medians. Recall@10 is against an independent oracle: float32 MaxSim of every
query against every page, in numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
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
from retrieval.store.planning import tuned_depths
from retrieval.types import DATATYPES, CollectionInfo, PageEmbedding, PageRecord

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
    """Upsert ``pages``, then index them: (upload s, index s). The upload is the time spent in
    the store; the synthetic pages are generated outside it."""
    uploading = 0.0
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
        start = time.perf_counter()
        store.upsert_pages("bench", records)
        uploading += time.perf_counter() - start
    start = time.perf_counter()
    store.flush("bench")
    store.optimize("bench")
    return uploading, time.perf_counter() - start


def du(path: Path) -> int:
    """Bytes actually allocated (WAL segments are preallocated sparse files)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def drop_from_page_cache(path: Path) -> None:
    """Evict the store's files from the page cache (unprivileged: clean pages only, which is all
    of them once the store is flushed): the next reads come from the disk."""
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.1f}" if values else "-"


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


# Store layouts compared: the default (FDE graph, clustered middle stage) and the one before it
# (SimHash buckets), each searched at the depths the store uses for it (``TUNED_DEPTHS``);
# "fde" goes straight to the rerank.
CONFIGS = {
    "fde+clusters": {"pooling": ("clusters",)},
    "fde+buckets": {"pooling": ("buckets",)},
    "fde": {"pooling": ()},
}
STAGES = ("encode", "fde", "middle", "original", "other")


def open_store(path: Path, args: argparse.Namespace, config: str | None = None) -> PageStore:
    """The store at ``path``, with the swept depths' first value; created with ``config``'s
    schema when given."""
    store = PageStore(
        EdgeBackend(path),
        original_dtype=args.dtype,
        fde=FdeParams(*args.fde),
        pooled_dtype=args.pooled_dtype,
    )
    if config:
        pooling = CONFIGS[config]["pooling"]
        store.create_collection("bench", model="synthetic", max_visual_tokens=768, pooling=pooling)
    return store


def depths(args: argparse.Namespace, config: str) -> list[tuple[int, int, float]]:
    """(FDE candidates, prefetch, oversampling) to measure: the swept ones, else those the
    store uses for the layout's middle stage."""
    pooling = CONFIGS[config]["pooling"]
    info = CollectionInfo("bench", "synthetic", 768, pooling=pooling, first_stage="fde")
    tuned = tuned_depths(info)
    limits = args.first_stage_limit or [tuned.first_stage_limit]
    prefetches = args.prefetch or [tuned.prefetch]
    oversamplings = args.oversampling or [tuned.oversampling]
    return [(lim, k, o) for o in oversamplings for lim in limits for k in prefetches]


def stage_times(timings: dict[str, float], middle: str | None) -> dict[str, float]:
    """A query's timings in the bench's stages."""
    out = {
        "encode": timings.get("encode", 0.0),
        "fde": timings.get("fde", 0.0),
        "middle": timings.get(middle, 0.0) if middle else 0.0,
        "original": timings.get("original", 0.0),
    }
    out["other"] = timings["total"] - sum(out.values())
    return out


def timed_queries(store: PageStore, queries, truth, limit, k, over) -> dict:
    """Run ``queries`` at these depths: per-query ms, stage medians, recall@10."""
    store.first_stage_limit, store.prefetch, store.oversampling = limit, k, over
    middle = (store.collection("bench").pooling or (None,))[0]
    totals, stages, recalls = [], {s: [] for s in STAGES}, []
    for i, q in enumerate(queries):
        timings: dict[str, float] = {}
        start = time.perf_counter()
        hits = store.search("bench", q, top_k=10, timings=timings)
        totals.append((time.perf_counter() - start) * 1000)
        for stage, ms in stage_times(timings, middle).items():
            stages[stage].append(ms)
        if i < len(truth):
            recalls.append(len({f"{h.doc_id}:{h.page}" for h in hits} & truth[i]) / 10)
    return {
        "ms": totals,
        "stages": {s: statistics.median(v) for s, v in stages.items()},
        "recall": statistics.mean(recalls) if recalls else float("nan"),
    }


COLD_PROBE = """
import json, sys, time
import numpy as np
from bench.search_bench import open_store, timed_queries, parse_args
args = parse_args(json.loads(sys.argv[1]))
queries = [np.asarray(q, dtype=np.float32) for q in json.load(open(sys.argv[3]))]
truth = [set(t) for t in json.load(open(sys.argv[4]))]
limit, k, over = json.loads(sys.argv[5])
start = time.perf_counter()
store = open_store(__import__("pathlib").Path(sys.argv[2]), args)
store.warm_up_in_background()  # as the service and the CLI do at start
opened = (time.perf_counter() - start) * 1000
result = timed_queries(store, queries, truth, limit, k, over)
result["open_ms"] = opened
print(json.dumps(result))
"""


def first_queries(path: Path, args, queries, truth, depth, *, evict: bool) -> dict:
    """The first queries of a fresh process on the store just reopened: with its files as the
    page cache holds them (the OS may have dropped some since they were written), or, with
    ``evict``, none of them in memory."""
    if evict:
        drop_from_page_cache(path)
    with tempfile.TemporaryDirectory() as tmp:
        qfile, tfile = Path(tmp) / "q.json", Path(tmp) / "t.json"
        qfile.write_text(json.dumps([q.tolist() for q in queries]))
        tfile.write_text(json.dumps([sorted(t) for t in truth]))
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                COLD_PROBE,
                json.dumps(sys.argv[1:]),
                str(path),
                str(qfile),
                str(tfile),
                json.dumps(depth),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _burn(stop) -> None:
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    while not stop.is_set():
        a = np.tanh(a @ a)


class Busy:
    """Two processes keeping both cores busy for the duration of a ``with`` block."""

    def __enter__(self):
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.procs = [ctx.Process(target=_burn, args=(self.stop,), daemon=True) for _ in range(2)]
        blas = os.environ.get("OPENBLAS_NUM_THREADS")
        os.environ["OPENBLAS_NUM_THREADS"] = "1"  # one busy thread each: two cores, not four
        try:
            for p in self.procs:
                p.start()
        finally:
            if blas is None:
                del os.environ["OPENBLAS_NUM_THREADS"]
            else:
                os.environ["OPENBLAS_NUM_THREADS"] = blas
        time.sleep(1.0)  # started and spinning
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def oracle(corpus_name: str, n: int, queries, workdir: Path, count: int) -> list[set]:
    """The true top 10 of the first ``count`` queries, cached beside the stores."""
    cache = workdir / f"truth-{corpus_name}-{n}-{count}-{hash_queries(queries)}.json"
    if cache.exists():
        return [set(t) for t in json.loads(cache.read_text())]
    truth = brute_force_top10(CORPORA[corpus_name](), n, queries[:count])
    cache.write_text(json.dumps([sorted(t) for t in truth]))
    return truth


def hash_queries(queries) -> str:
    return hashlib.sha256(np.concatenate(queries).tobytes()).hexdigest()[:12]


def run(corpus_name: str, n: int, config: str, args: argparse.Namespace, workdir: Path):
    """Build (or reuse) one store and measure it: rows of the latency and size tables."""
    corpus = CORPORA[corpus_name]()
    path = workdir / f"{corpus_name}-{n}-{config}-{args.dtype}-{args.pooled_dtype}"
    upload_s = index_s = float("nan")
    if not (path / "bench").is_dir():
        shutil.rmtree(path, ignore_errors=True)
        store = open_store(path, args, config)
        upload_s, index_s = build(store, corpus, range(n))
        store.close()
        print(f"built {corpus_name} {n} {config}: {upload_s:.0f} + {index_s:.0f} s", flush=True)
    rng = np.random.default_rng(123)
    queries = [corpus.query(int(rng.integers(0, n)), rng) for _ in range(args.queries)]
    truth = oracle(corpus_name, n, queries, workdir, args.queries)
    sweep = depths(args, config)
    rows = []
    for phase, evict in (("reopened", False), ("evicted", True)):
        first = first_queries(path, args, queries, truth, sweep[0], evict=evict)
        rows.append(row(corpus_name, n, config, sweep[0], phase, first))
    store = open_store(path, args)
    for q in queries:  # every query once: the pages it reads are in memory
        store.search("bench", q, top_k=10)
    for depth in sweep:
        rows.append(
            row(corpus_name, n, config, depth, "warm", timed_queries(store, queries, truth, *depth))
        )
    if not args.skip_loaded:
        with Busy():
            loaded = timed_queries(store, queries, truth, *sweep[0])
        rows.append(row(corpus_name, n, config, sweep[0], "loaded", loaded))
    store.close()
    for r in rows:
        print(" | ".join(map(str, r)), flush=True)
    disk = du(path) / n / 1024
    size = [
        corpus_name,
        n,
        config,
        f"{upload_s:.0f}",
        f"{n / upload_s:.0f}" if upload_s == upload_s else "-",
        f"{index_s:.1f}",
        f"{disk:.0f}",
    ]
    if args.workdir is None:
        shutil.rmtree(path)
    return rows, size


def row(corpus, n, config, depth, phase, result) -> list:
    limit, k, over = depth
    ms = result["ms"]
    first = f"{ms[0]:.0f}" if phase in ("reopened", "evicted") else "-"
    return [
        corpus,
        n,
        config,
        limit,
        k,
        over,
        phase,
        first,
        pct(ms, 50),
        pct(ms, 95),
        *(f"{result['stages'][s]:.1f}" for s in STAGES),
        f"{result['recall']:.3f}",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    parser.add_argument(
        "--configs", nargs="+", choices=list(CONFIGS), default=["fde+clusters", "fde+buckets"]
    )
    parser.add_argument(
        "--queries", type=int, default=30, help="queries, each scored against the oracle"
    )
    parser.add_argument("--prefetch", type=int, nargs="+", help="rerank depths to sweep (warm)")
    parser.add_argument(
        "--first-stage-limit", type=int, nargs="+", help="FDE candidates to sweep (warm)"
    )
    parser.add_argument("--oversampling", type=float, nargs="+", help="to sweep (warm)")
    parser.add_argument(
        "--fde", type=int, nargs=3, default=[4, 32, 20], metavar=("K_SIM", "DIM_PROJ", "R_REPS")
    )
    parser.add_argument(
        "--dtype", choices=DATATYPES, default="float16", help="storage of `original`"
    )
    parser.add_argument(
        "--pooled-dtype", choices=DATATYPES, default="turbo8", help="storage of the middle stage"
    )
    parser.add_argument("--skip-loaded", action="store_true", help="no run with both cores busy")
    parser.add_argument(
        "--workdir", type=Path, help="keep the stores here and reuse them on the next run"
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
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
    title += f", pooled vectors in {args.pooled_dtype}"
    print(header(title, "bench.search_bench"))
    print(
        table(
            [
                "corpus",
                "pages",
                "layout",
                "FDE candidates",
                "prefetch",
                "oversampling",
                "phase",
                "first query ms",
                "p50 ms",
                "p95 ms",
                *(f"{s} p50 ms" for s in STAGES),
                "recall@10",
            ],
            latency,
        )
    )
    print()
    print(
        table(
            ["corpus", "pages", "layout", "upload s", "upload pages/s", "index s", "disk KB/page"],
            sizes,
        )
    )


if __name__ == "__main__":
    main()
