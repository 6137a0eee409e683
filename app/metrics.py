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
        self.queue_depth = Gauge(
            "colqwen_jobs_queued", "Ingestion jobs waiting", registry=self.registry
        )

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
