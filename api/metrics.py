"""Prometheus metrics of one API instance, in their own registry (one per app, so tests and
several apps in one process never share counters).

Every label takes a bounded set of values: endpoints are the app's own paths (anything else is
``other``), error kinds come from a fixed table, model versions change only on a promotion.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

from lakeloop.dataset import Target

if TYPE_CHECKING:
    from lakeloop.registry import Blocked

# Latency buckets around what this API does: sub-millisecond to a second.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# "Nice" steps per decade for the prediction buckets: fine enough that a quantile of house prices
# between 50,000 and 500,000 USD lands in one of seven buckets, coarse enough to stay ~20 series.
_NICE_STEPS = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
_LINEAR_BUCKETS = 20
# What an answer's status means, for the errors counter; any other 4xx is `client`, 5xx `internal`.
ERROR_KINDS = {
    400: "malformed",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    422: "validation",
    429: "rate_limited",
    503: "unavailable",
}

FEEDBACK_OUTCOMES = ("accepted", "correction", "unmatched", "unknown")
"""What became of a feedback report whose body passed the checks: stored (``accepted``), stored as
a ``correction`` of an earlier report, stored for an id not in the log (``unmatched``), or refused
because its prediction id is not in the log (``unknown``, a 404)."""


def error_kind(status: int) -> str | None:
    """The error kind of an HTTP status (``None`` for a success or a redirect)."""
    if status < 400:
        return None
    return ERROR_KINDS.get(status, "client" if status < 500 else "internal")


def prediction_buckets(target: Target) -> tuple[float, ...]:
    """Histogram bounds for predicted values, in the target's own units, from its bounds.

    A positive range gets a geometric series of round numbers (prices spread over decades); a
    range reaching zero or below gets even steps; a target without bounds gets Prometheus's
    default buckets."""
    low, high = target.min, target.max
    if low is None or high is None or high <= low:
        return Histogram.DEFAULT_BUCKETS[:-1]  # without +Inf, which the histogram adds itself
    if low <= 0:
        step = (high - low) / _LINEAR_BUCKETS
        return tuple(low + step * index for index in range(1, _LINEAR_BUCKETS + 1))
    bounds = [
        float(f"{step:g}e{decade}")  # decimal, so 0.7 stays 0.7 and not 0.7000000000000001
        for decade in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        for step in _NICE_STEPS
    ]
    kept = [bound for bound in bounds if low <= bound < high]
    return (*kept, high)


class ValueHistogram:
    """A label-free histogram that takes a whole batch of values in one numpy call.

    ``prometheus_client``'s Histogram observes one value at a time (about 1 µs each, so a
    1,000-record batch would pay a millisecond under a lock); this counts the batch with
    ``searchsorted`` and exposes the same text format."""

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(bounds, dtype=float)
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # the last is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, values: np.ndarray) -> None:
        """Count finite ``values`` into their buckets (a bucket holds values <= its bound)."""
        finite = values[np.isfinite(values)]
        slots = np.searchsorted(self.bounds, finite, side="left")
        counts = np.bincount(slots, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(finite.sum())

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        bounds = [*(repr(float(bound)) for bound in self.bounds), "+Inf"]
        yield HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=list(zip(bounds, cumulative, strict=True)),
            sum_value=total,
        )


class ApiMetrics:
    """Requests (rate, latency, in flight, errors by kind), predictions (by model version, and
    the distribution of predicted values), feedback by outcome, the prediction log's queue, drops
    and failed writes, model swaps and failed model loads."""

    def __init__(self, *, prediction_buckets: tuple[float, ...] = _BUCKETS, unit: str = "") -> None:
        self.registry = CollectorRegistry()
        # The process's CPU, memory, open files and start time, and the Python version: the
        # default registry has them, but this one is the app's own, so it registers them itself.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
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
        self.in_flight = Gauge(
            "lakeloop_api_requests_in_flight",
            "HTTP requests being answered right now.",
            registry=self.registry,
        )
        self.errors = Counter(
            "lakeloop_api_errors",
            "Answers with a 4xx or 5xx status, by endpoint and kind (validation, too_large, "
            "unauthorized, unavailable = no champion or no registry, internal, ...).",
            ["endpoint", "kind"],
            registry=self.registry,
        )
        self.predictions = Counter(
            "lakeloop_api_predictions",
            "Predictions made, by model version.",
            ["model_version"],
            registry=self.registry,
        )
        self.predicted_values = ValueHistogram(
            "lakeloop_api_predicted_value",
            f"Distribution of predicted values{f' ({unit})' if unit else ''}.",
            prediction_buckets,
        )
        self.registry.register(self.predicted_values)
        self.log_dropped = Counter(
            "lakeloop_api_prediction_log_dropped_rows",
            "Prediction log rows dropped because the log queue was full.",
            ["log"],
            registry=self.registry,
        )
        self.log_write_errors = Counter(
            "lakeloop_api_prediction_log_write_errors",
            "Log segments that could not be written (a full disk, a missing folder).",
            ["log"],
            registry=self.registry,
        )
        self.log_lost = Counter(
            "lakeloop_api_prediction_log_lost_rows",
            "Log rows lost because their segment could not be written.",
            ["log"],
            registry=self.registry,
        )
        self.log_queued = Gauge(
            "lakeloop_api_prediction_log_queued_rows",
            "Rows waiting in the log queue.",
            ["log"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "lakeloop_api_feedback",
            "Feedback reports by outcome: accepted, correction (replaces an earlier report), "
            "unmatched (stored for a prediction id not in the log), unknown (refused: 404).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in FEEDBACK_OUTCOMES:  # every series from the start, at 0
            self.feedback.labels(outcome)
        self.swaps = Counter(
            "lakeloop_api_model_swaps",
            "Model versions swapped in (the first load counts).",
            registry=self.registry,
        )
        self.load_failures = Counter(
            "lakeloop_api_model_load_failures",
            "Attempts to load a champion version that failed (the previous version kept serving).",
            ["model_version"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "lakeloop_api_model_info",
            "The served model version (value 1 on the served version's label).",
            ["model_version"],
            registry=self.registry,
        )

        self.training_blocked = Gauge(
            "lakeloop_training_blocked",
            "1 while the data on the production branch fails the checks, so no model can train and "
            "the served champion is stale (as the registry said at the API's last check).",
            registry=self.registry,
        )
        self.commits_behind = Gauge(
            "lakeloop_champion_commits_behind",
            "While training is blocked: commits on the production branch newer than the "
            "champion's (0 otherwise, or when unknown).",
            registry=self.registry,
        )

    def seed(self, routes: Iterable[tuple[str, str, int]]) -> None:
        """Create every known request and error series at zero: each route's ``(endpoint,
        method, success status)`` and each endpoint with each error kind.

        ``increase()`` and ``rate()`` measure a counter from its first sample, so a series that
        first appears at 1 counts nothing: the first 5xx of an endpoint would never reach the
        error ratio or an alert. Seeded, it is there at 0 from the first scrape on. Statuses
        other than a route's own success are not known beforehand and appear when they happen;
        their errors are counted here by kind."""
        endpoints = set()
        for endpoint, method, status in routes:
            self.requests.labels(endpoint, method, str(status))
            endpoints.add(endpoint)
        kinds = sorted({*ERROR_KINDS.values(), "client", "internal"})
        for endpoint in sorted(endpoints):
            for kind in kinds:
                self.errors.labels(endpoint, kind)

    def blocked(self, blocked: Blocked | None) -> None:
        """Record whether training is blocked and how far the champion lags behind."""
        self.training_blocked.set(0 if blocked is None else 1)
        self.commits_behind.set((blocked.commits_behind or 0) if blocked else 0)

    @classmethod
    def for_target(cls, target: Target) -> ApiMetrics:
        """Metrics whose prediction histogram suits this target's range and unit."""
        return cls(prediction_buckets=prediction_buckets(target), unit=target.unit)

    def served(self, version: str) -> None:
        """Record that ``version`` is now served; its predictions count from zero, so its first
        prediction is an increase of one."""
        self.model_version.clear()
        self.model_version.labels(model_version=version).set(1)
        self.predictions.labels(version)

    def predicted(self, version: str, values: np.ndarray) -> None:
        """Count predictions made by ``version`` and add their values to the distribution."""
        self.predictions.labels(version).inc(len(values))
        self.predicted_values.observe(values)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def middleware(
        self, known_paths: frozenset[str], *, unmeasured: tuple[str, ...] = ()
    ) -> Callable[[ASGIApp], ASGIApp]:
        """ASGI middleware counting, timing and classifying every HTTP request, except those
        whose path starts with one of ``unmeasured`` (static files, which would otherwise dilute
        the error ratio the availability alert divides by). Unknown paths share one label, so a
        scanner cannot blow up the number of series."""

        def wrap(app: ASGIApp) -> ASGIApp:
            async def measured(scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] != "http" or scope["path"].startswith(unmeasured):
                    await app(scope, receive, send)
                    return
                started = time.perf_counter()
                status = [500]  # what an exception escaping the app becomes

                async def send_status(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        status[0] = message["status"]
                    await send(message)

                self.in_flight.inc()
                try:
                    await app(scope, receive, send_status)
                except HTTPException as error:  # raised by a middleware (a 429): answered outside
                    status[0] = error.status_code
                    raise
                finally:
                    self.in_flight.dec()
                    path = scope["path"]
                    endpoint = path if path in known_paths else "other"
                    method = scope["method"]  # type: ignore[typeddict-item] # HTTP scopes have one
                    self.requests.labels(endpoint, method, str(status[0])).inc()
                    self.latency.labels(endpoint).observe(time.perf_counter() - started)
                    if kind := error_kind(status[0]):
                        self.errors.labels(endpoint, kind).inc()

            return measured

        return wrap
