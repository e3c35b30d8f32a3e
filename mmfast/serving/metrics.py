"""Prometheus metrics of one app, in its own registry (two apps in one process, as in the
tests, never share counters; the global registry is left to the embedding program).

    mmfast_requests_total{route, status}       requests answered, by route template and status
    mmfast_request_seconds{route}              latency, receipt to response
    mmfast_batch_size{model}                   requests per batched call
    mmfast_batch_seconds{model}                duration of a batched call
    mmfast_queue_depth{model}                  requests waiting for a batch
    mmfast_shed_total{model, reason}           refused (queue_full) or abandoned (timeout)
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# Request latency: from a cached answer (~1 ms) to a long beam search under load (~30 s).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The app's metrics; also the batchers' :class:`~mmfast.serving.batcher.BatchObserver`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mmfast_requests", "Requests answered", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "mmfast_request_seconds",
            "Request latency, receipt to response",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mmfast_batch_size", "Requests per batch", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "mmfast_batch_seconds",
            "Duration of a batched call",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.depth = Gauge("mmfast_queue_depth", "Requests waiting", ["model"], registry=r)
        self.shed_total = Counter(
            "mmfast_shed", "Requests refused or abandoned", ["model", "reason"], registry=r
        )

    def request_done(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    # BatchObserver
    def batch_done(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.batch_seconds.labels(model).observe(seconds)

    def queue_depth(self, model: str, depth: int) -> None:
        self.depth.labels(model).set(depth)

    def shed(self, model: str, reason: str) -> None:
        self.shed_total.labels(model, reason).inc()

    def render(self) -> bytes:
        """The text exposition format (GET /metrics)."""
        return generate_latest(self.registry)
