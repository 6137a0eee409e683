"""How well a deployment retrieves: ranking metrics on a labelled set, per search mode, and the
fidelity of the fast modes to exact MaxSim.

A dataset is a BEIR-style folder: ``queries.jsonl`` (``{"_id", "text"}``), ``corpus.jsonl``
(``{"_id", "doc_id", "page"}``: which stored page each corpus id is; ``doc_id`` is the
document's sha256, as ingestion names documents) and ``qrels/test.tsv`` (a header, then
``query-id <tab> corpus-id <tab> relevance``). ViDoRe's page-level datasets map onto it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.errors import InvalidInput

K_NDCG = (5, 10)
K_RECALL = (1, 5, 10, 100)
DEPTH = 100  # hits retrieved per query


@dataclass(frozen=True)
class Dataset:
    queries: dict[str, str]  # query id -> text
    pages: dict[tuple[str, int], str]  # (doc_id, page) -> corpus id
    qrels: dict[str, dict[str, int]]  # query id -> corpus id -> relevance (> 0)

    @classmethod
    def load(cls, folder: str | Path) -> Dataset:
        root = Path(folder)
        for need in ("queries.jsonl", "corpus.jsonl", "qrels/test.tsv"):
            if not (root / need).is_file():
                raise InvalidInput(
                    f"{root}: no {need} (a BEIR-style folder has queries.jsonl, "
                    "corpus.jsonl and qrels/test.tsv)"
                )
        queries = {r["_id"]: r["text"] for r in _jsonl(root / "queries.jsonl")}
        pages = {(r["doc_id"], int(r["page"])): r["_id"] for r in _jsonl(root / "corpus.jsonl")}
        qrels: dict[str, dict[str, int]] = {}
        lines = (root / "qrels" / "test.tsv").read_text().splitlines()
        for n, line in enumerate(lines[1:], 2):
            parts = line.split("\t")
            if len(parts) != 3:
                raise InvalidInput(f"qrels/test.tsv line {n}: expected 3 tab-separated fields")
            qid, cid, rel = parts
            if int(rel) > 0:
                qrels.setdefault(qid, {})[cid] = int(rel)
        unknown = set(qrels) - set(queries)
        if unknown:
            raise InvalidInput(
                f"qrels name queries that queries.jsonl lacks: {sorted(unknown)[:5]}"
            )
        return cls(queries, pages, qrels)


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError:
                raise InvalidInput(f"{path.name} line {n}: not JSON") from None


# --- metrics (binary or graded relevance; ranked: corpus ids, best first) ------------------


def ndcg(ranked: Sequence[str], rels: dict[str, int], k: int) -> float:
    """Normalised discounted cumulative gain at k: sum of (2^rel - 1) / log2(rank + 1)."""
    gain = sum((2 ** rels.get(c, 0) - 1) / math.log2(i + 2) for i, c in enumerate(ranked[:k]))
    ideal = sorted(rels.values(), reverse=True)[:k]
    best = sum((2**r - 1) / math.log2(i + 2) for i, r in enumerate(ideal))
    return gain / best if best else 0.0


def recall(ranked: Sequence[str], rels: dict[str, int], k: int) -> float:
    """Share of the relevant pages found in the top k."""
    return len(set(ranked[:k]) & set(rels)) / len(rels) if rels else 0.0


def mrr(ranked: Sequence[str], rels: dict[str, int]) -> float:
    """1 / rank of the first relevant page (0 if none is retrieved)."""
    return next((1 / (i + 1) for i, c in enumerate(ranked) if c in rels), 0.0)


def scores(ranked: Sequence[str], rels: dict[str, int]) -> dict[str, float]:
    out = {f"ndcg@{k}": ndcg(ranked, rels, k) for k in K_NDCG}
    out |= {f"recall@{k}": recall(ranked, rels, k) for k in K_RECALL}
    out["mrr"] = mrr(ranked, rels)
    return out


# --- running a dataset ------------------------------------------------------------------


@dataclass
class ModeResult:
    mode: str
    prefetch: int | None
    metrics: dict[str, float]
    queries: int
    ms_per_query: float
    fidelity: float | None = None  # recall@10 against exact MaxSim, on sampled queries
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "prefetch": self.prefetch,
            "queries": self.queries,
            "ms_per_query": round(self.ms_per_query, 2),
            **{k: round(v, 4) for k, v in self.metrics.items()},
            "fidelity_recall@10": None if self.fidelity is None else round(self.fidelity, 4),
        }


# search(query text, mode, prefetch) -> ranked (doc_id, page) pairs, best first
SearchFn = Callable[[str, str, int | None], list[tuple[str, int]]]


def evaluate(
    dataset: Dataset,
    search: SearchFn,
    modes: Sequence[str],
    prefetches: Sequence[int | None] = (None,),
    *,
    fidelity_sample: int = 0,
    on_query: Callable[[], None] | None = None,
) -> list[ModeResult]:
    """Metrics of every (mode, prefetch), averaged over the queries that have qrels; with
    ``fidelity_sample`` > 0, also the recall@10 of each mode against ``exact`` on that many
    queries (the first ones: deterministic)."""
    qids = [q for q in dataset.queries if q in dataset.qrels]
    exact_top: dict[str, set[tuple[str, int]]] = {}
    if fidelity_sample:
        for qid in qids[:fidelity_sample]:
            exact_top[qid] = set(search(dataset.queries[qid], "exact", None)[:10])
    results = []
    for mode in modes:
        for prefetch in prefetches if mode in ("two_stage", "hybrid") else (None,):
            per_query: dict[str, dict[str, float]] = {}
            agreement = []
            start = time.perf_counter()
            for qid in qids:
                hits = search(dataset.queries[qid], mode, prefetch)
                ranked = [dataset.pages.get(h, f"{h[0]}:{h[1]}") for h in hits]
                per_query[qid] = scores(ranked, dataset.qrels[qid])
                if exact_top.get(qid):
                    agreement.append(len(set(hits[:10]) & exact_top[qid]) / len(exact_top[qid]))
                if on_query:
                    on_query()
            elapsed = (time.perf_counter() - start) * 1000 / max(1, len(qids))
            mean = (
                {
                    k: sum(s[k] for s in per_query.values()) / len(per_query)
                    for k in next(iter(per_query.values()))
                }
                if per_query
                else {}
            )
            results.append(
                ModeResult(
                    mode,
                    prefetch,
                    mean,
                    len(per_query),
                    elapsed,
                    sum(agreement) / len(agreement) if agreement else None,
                    per_query,
                )
            )
    return results
