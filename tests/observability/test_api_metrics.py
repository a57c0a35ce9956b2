"""The API's own metrics: errors by kind, in-flight requests, the distribution of predictions
(buckets from the dataset description's target bounds), all with bounded labels."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.metrics import ERROR_KINDS, ValueHistogram, error_kind, prediction_buckets
from api.predictor import ModelSlot, Predictor
from lakeloop.dataset import DatasetSpec, Target
from lakeloop.model import TrainedModel
from lakeloop.settings import Settings


@pytest.fixture
def client(settings: Settings, tiny_model: TrainedModel) -> Iterator[TestClient]:
    slot = ModelSlot(Predictor(model=tiny_model.pipeline, name="housing-price", version="3"))
    with TestClient(create_app(settings, slot=slot, follow_registry=False)) as test_client:
        yield test_client


@pytest.fixture
def record(market_batch: pd.DataFrame, spec: DatasetSpec) -> dict[str, Any]:
    row = market_batch.head(1)[spec.feature_names]
    records: list[dict[str, Any]] = (
        row.astype(object).where(row.notna(), None).to_dict(orient="records")
    )
    return records[0]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition page, keyed by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


def test_house_price_buckets_cover_the_target_range_in_round_dollars(spec: DatasetSpec) -> None:
    buckets = prediction_buckets(spec.target)
    assert buckets[0] == spec.target.min
    assert buckets[-1] == spec.target.max
    assert list(buckets) == sorted(set(buckets))
    # Where the census prices are (the warning band caps at 500,001), quantiles are resolvable.
    typical = [bound for bound in buckets if 50_000 <= bound <= 500_000]
    assert typical == [50_000, 70_000, 100_000, 150_000, 200_000, 300_000, 500_000]
    assert len(buckets) <= 25


def test_buckets_for_targets_that_are_not_prices() -> None:
    assert prediction_buckets(Target(name="t", min=-10, max=10)) == tuple(
        -10 + index for index in range(1, 21)
    )
    assert prediction_buckets(Target(name="rate", min=0.1, max=1))[:3] == (0.1, 0.15, 0.2)
    assert prediction_buckets(Target(name="t"))[-1] == 10.0  # Prometheus's defaults, no +Inf


def test_value_histogram_matches_prometheus_bucket_semantics() -> None:
    histogram = ValueHistogram("x", "x", (1.0, 2.0, 5.0))
    histogram.observe(np.array([0.5, 1.0, 1.5, 5.0, 9.0, np.nan]))
    [family] = histogram.collect()
    counts = {sample.labels.get("le"): sample.value for sample in family.samples}
    assert counts == {"1.0": 2, "2.0": 3, "5.0": 4, "+Inf": 5, None: 17.0}  # None: the sum


def test_error_kinds_are_a_closed_set() -> None:
    assert error_kind(200) is None
    assert [error_kind(code) for code in (400, 401, 413, 422, 503)] == [
        "malformed",
        "unauthorized",
        "too_large",
        "validation",
        "unavailable",
    ]
    assert error_kind(418) == "client"
    assert error_kind(500) == error_kind(502) == "internal"


def test_errors_by_kind_in_flight_and_prediction_distribution(
    client: TestClient, record: dict[str, Any], spec: DatasetSpec
) -> None:
    answer = client.post("/v1/predict", json=record).json()
    client.post("/v1/predict/batch", json={"records": [record] * 4})
    client.post("/v1/predict", json=record | {"median_income": "lots"})
    client.post("/v1/predict", content=b"{not json")
    client.post("/v1/admin/reload")
    client.post("/v1/predict/batch", json={"records": [record] * 1001})
    # Litestar answers unknown paths in its router, before any route middleware: a scanner's
    # requests cost no series at all.
    assert client.get("/wp-login.php").status_code == 404

    text = client.get("/metrics").text
    page = samples(text)
    errors = "lakeloop_api_errors_total"
    assert value(page, errors, endpoint="/v1/predict", kind="validation") == 1
    assert value(page, errors, endpoint="/v1/predict", kind="malformed") == 1
    assert value(page, errors, endpoint="/v1/admin/reload", kind="unauthorized") == 1
    assert value(page, errors, endpoint="/v1/predict/batch", kind="too_large") == 1
    assert not any(dict(labels).get("endpoint") == "/wp-login.php" for _, labels in page)
    # The scrape itself is in flight while the page is rendered; nothing else is.
    assert value(page, "lakeloop_api_requests_in_flight") == 1

    histogram = "lakeloop_api_predicted_value"
    assert value(page, f"{histogram}_count") == 5
    assert value(page, f"{histogram}_sum") == pytest.approx(5 * answer["prediction"])
    above = next(
        bound for bound in prediction_buckets(spec.target) if bound >= answer["prediction"]
    )
    assert value(page, f"{histogram}_bucket", le=repr(above)) == 5
    assert f"# HELP {histogram} Distribution of predicted values (USD)." in text


def test_the_swagger_page_files_are_not_counted_as_requests(client: TestClient) -> None:
    """A browser opening the docs fetches Swagger UI's files: they stay out of the request
    counters (the availability ratio divides by them), the page itself is counted as before."""
    assert client.get("/schema/swagger").status_code == 200
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "missing.js"):
        client.get(f"/schema/swagger-ui/{name}")
    page = samples(client.get("/metrics").text)
    counted = {
        dict(labels)["endpoint"]: count
        for (name, labels), count in page.items()
        if name == "lakeloop_api_requests_total" and count  # the seeded zeros aside
    }
    assert counted == {"other": 1}
    assert value(page, "lakeloop_api_request_duration_seconds_count", endpoint="other") == 1


def test_no_champion_counts_as_unavailable(settings: Settings, record: dict[str, Any]) -> None:
    with TestClient(create_app(settings, slot=ModelSlot(), follow_registry=False)) as client:
        assert client.post("/v1/predict", json=record).status_code == 503
        page = samples(client.get("/metrics").text)
    assert value(page, "lakeloop_api_errors_total", endpoint="/v1/predict", kind="unavailable") == 1
    assert value(page, "lakeloop_api_predicted_value_count") == 0


def test_the_api_exports_its_process_metrics(client: TestClient) -> None:
    page = samples(client.get("/metrics").text)
    names = {name for name, _ in page}
    assert {
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
        "python_info",
    } <= names
    assert value(page, "process_resident_memory_bytes") > 0


def test_counters_are_exported_at_zero_before_their_first_event(
    client: TestClient, record: dict[str, Any]
) -> None:
    """``increase()`` measures from a series' first sample: a series that first appears at 1
    counts nothing. So every known combination is on the first page at 0 (each route with its
    success status, each endpoint with each error kind, the served version's predictions), and
    the first event moves that same series to 1."""
    page = samples(client.get("/metrics").text)
    requests, errors = "lakeloop_api_requests_total", "lakeloop_api_errors_total"
    predictions = "lakeloop_api_predictions_total"
    routes = (
        ("/v1/predict", "POST", "200"),
        ("/v1/feedback", "POST", "202"),
        ("/readyz", "GET", "200"),
    )
    seeded = {
        *(
            (requests, frozenset({("endpoint", path), ("method", method), ("status", status)}))
            for path, method, status in routes
        ),
        (predictions, frozenset({("model_version", "3")})),
        *(
            (errors, frozenset({("endpoint", endpoint), ("kind", kind)}))
            for endpoint in ("/v1/predict", "/v1/predict/batch", "/v1/admin/reload")
            for kind in {*ERROR_KINDS.values(), "client", "internal"}
        ),
    }
    assert {key: page.get(key) for key in seeded} == dict.fromkeys(seeded, 0.0)
    # Only known endpoints are seeded: no series for paths the app does not have.
    assert {dict(labels)["endpoint"] for name, labels in page if name == errors} <= {
        "/v1/predict",
        "/v1/predict/batch",
        "/v1/model",
        "/v1/feedback",
        "/v1/admin/reload",
        "/healthz",
        "/readyz",
        "/metrics",
    }

    client.post("/v1/predict", json=record)
    client.post("/v1/predict", json=record | {"median_income": "lots"})
    page = samples(client.get("/metrics").text)
    assert value(page, requests, endpoint="/v1/predict", method="POST", status="200") == 1
    assert value(page, errors, endpoint="/v1/predict", kind="validation") == 1
    assert value(page, predictions, model_version="3") == 1
