"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "colqwen_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "colqwen_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.pages_ingested = Counter(
            "colqwen_pages_ingested_total", "Pages embedded and stored", registry=self.registry
        )
        self.query_encode = Histogram(
            "colqwen_query_encode_seconds",
            "Time to embed a batch of queries",
            registry=self.registry,
        )
        self.query_batch = Histogram(
            "colqwen_query_batch_size",
            "Queries embedded per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.fidelity = Histogram(
            "colqwen_fidelity_recall_at_10",
            "Share of exact MaxSim's top 10 that the served mode also returned, on sampled "
            "queries re-run in exact mode in the background",
            ["mode", "collection"],
            buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=self.registry,
        )
        self.search_stage = Histogram(
            "colqwen_search_stage_seconds",
            "Time of each stage of a search: embed (the query through the model, batching "
            "included), encode (its FDE), each engine stage by the vector it scores (fde, the "
            "pooled middle stage, original; one figure for the whole query on a Qdrant server), "
            "and total (the store's part, embed excluded)",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "colqwen_jobs_queued", "Ingestion jobs waiting", registry=self.registry
        )

    def observe_search(self, timings: dict[str, float]) -> None:
        """A search's stage timings (milliseconds, as ``PageStore.search`` gives them)."""
        for stage, ms in timings.items():
            self.search_stage.labels(stage).observe(ms / 1000)

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
