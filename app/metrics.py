"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request


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
        self.queue_depth = Gauge(
            "colqwen_jobs_queued", "Ingestion jobs waiting", registry=self.registry
        )

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware(BaseHTTPMiddleware):
    """Counts and times every request, by route template (not raw path) and status."""

    async def dispatch(self, request: Request, call_next):
        services = getattr(request.app.state, "services", None)
        if services is None:  # still starting up
            return await call_next(request)
        start = time.perf_counter()
        response = await call_next(request)
        path = getattr(request.scope.get("route"), "path", "unmatched")
        metrics: Metrics = services.metrics
        metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        metrics.latency.labels(request.method, path).observe(time.perf_counter() - start)
        return response
