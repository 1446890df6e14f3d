"""Prometheus metrics of one backend worker process.

Each app gets its own `CollectorRegistry`, so tests can run several apps in
one process. With `--workers N`, every worker process keeps its own counters
and `GET /metrics` returns the figures of whichever worker served that
request. Add the workers up on the Prometheus side, or run one worker per
container.
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

# Route label for requests that matched no route, so that scanning random
# paths cannot create an unbounded number of label values.
UNMATCHED_ROUTE = "unmatched"

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    buckets = [1.0]
    while buckets[-1] < max_batch_size:
        buckets.append(buckets[-1] * 2)
    return tuple(buckets)


class Metrics:
    """The counters and histograms of one app, in their own registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, *, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "frontbench_requests",
            "HTTP requests completed, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "frontbench_request_duration_seconds",
            "Time from receiving a request to sending the end of its response.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "frontbench_errors",
            "Error responses, by error kind.",
            ["kind"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "frontbench_batch_size",
            "Images in each forward pass.",
            buckets=_batch_buckets(max_batch_size),
            registry=self.registry,
        )
        self.inference = Histogram(
            "frontbench_inference_duration_seconds",
            "Time of each forward pass, whatever its batch size.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ready = Gauge(
            "frontbench_model_ready",
            "1 once the model is loaded and warmed up, else 0.",
            registry=self.registry,
        )

    def observe_request(
        self, *, route: str, method: str, status: int, seconds: float
    ) -> None:
        """Count one completed request and record its latency."""
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, *, size: int, seconds: float) -> None:
        """Record the size and duration of one forward pass."""
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)
