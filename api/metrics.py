"""Prometheus metrics of one API instance, in their own registry (one per app, so tests and
several apps in one process never share counters)."""

from __future__ import annotations

import time
from collections.abc import Callable

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets around what this API does: sub-millisecond to a second.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ApiMetrics:
    """Request counts and latency by endpoint and status, predictions by model version, log
    drops, model swaps."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lakeloop_api_requests",
            "HTTP requests by endpoint, method and status.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lakeloop_api_request_duration_seconds",
            "Time to answer a request, by endpoint.",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "lakeloop_api_predictions",
            "Predictions made, by model version.",
            ["model_version"],
            registry=self.registry,
        )
        self.log_dropped = Counter(
            "lakeloop_api_prediction_log_dropped_rows",
            "Prediction log rows dropped because the log queue was full.",
            ["log"],
            registry=self.registry,
        )
        self.log_queued = Gauge(
            "lakeloop_api_prediction_log_queued_rows",
            "Rows waiting in the log queue.",
            ["log"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "lakeloop_api_model_swaps",
            "Model versions swapped in (the first load counts).",
            registry=self.registry,
        )
        self.model_version = Gauge(
            "lakeloop_api_model_info",
            "The served model version (value 1 on the served version's label).",
            ["model_version"],
            registry=self.registry,
        )

    def served(self, version: str) -> None:
        """Record that ``version`` is now served."""
        self.model_version.clear()
        self.model_version.labels(model_version=version).set(1)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def middleware(self, known_paths: frozenset[str]) -> Callable[[ASGIApp], ASGIApp]:
        """ASGI middleware counting and timing every HTTP request. Unknown paths share one
        label, so a scanner cannot blow up the number of series."""

        def wrap(app: ASGIApp) -> ASGIApp:
            async def measured(scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] != "http":
                    await app(scope, receive, send)
                    return
                started = time.perf_counter()
                status = [500]

                async def send_status(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        status[0] = message["status"]
                    await send(message)

                try:
                    await app(scope, receive, send_status)
                finally:
                    path = scope["path"]
                    endpoint = path if path in known_paths else "other"
                    method = scope["method"]  # type: ignore[typeddict-item] # HTTP scopes have one
                    self.requests.labels(endpoint, method, str(status[0])).inc()
                    self.latency.labels(endpoint).observe(time.perf_counter() - started)

            return measured

        return wrap
