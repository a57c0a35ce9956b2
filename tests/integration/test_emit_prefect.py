"""The monitor's sender of the drift event (``lakeloop.events.emit``) against a real Prefect server
on loopback, started once for the module: an event it accepts is then readable from Prefect's
own events API by its id; an event it refuses (a 422 from Prefect's validation) and a Prefect
nobody listens for end in ``DeliveryError`` after the configured attempts, one logged warning
per attempt, and never in another exception."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from lakeloop.events import DRIFT_DETECTED, DeliveryError, emit, event_id
from lakeloop.settings import load_settings
from monitoring.events import drift_event
from monitoring.history import Window
from monitoring.parse import ColumnDrift, DriftSummary
from tests.utils.net import free_port
from tooling.stack import Stack, services

pytestmark = pytest.mark.integration

MODEL = "housing-price"
STORED_DEADLINE_SECONDS = 120.0
"""How long an accepted event may take to reach Prefect's event store (its persister writes in
batches, in the background, on a loaded machine)."""


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``prefect server start`` on a free loopback port; its API URL."""
    settings = load_settings(
        state_dir=tmp_path_factory.mktemp("emit") / "state", prefect={"port": free_port()}
    )
    stack = Stack(settings)
    [prefect] = [service for service in services(settings) if service.name == "prefect"]
    try:
        stack.wait(stack.start(prefect))
        yield settings.prefect_api_url
    finally:
        stack.down()


def a_drift_event(window_id: str) -> dict[str, Any]:
    """The event the monitor sends when its policy asks for a retrain, for this window."""
    now = datetime.now(UTC)
    features = ["longitude", "latitude", "median_income"]
    summary = DriftSummary(
        drift_share=2 / 3,
        drifted_features=features[:2],
        per_feature={
            name: ColumnDrift(
                score=0.4 if name in features[:2] else 0.02,
                method="Wasserstein distance (normed)",
                threshold=0.1,
                drifted=name in features[:2],
            )
            for name in features
        },
        prediction=None,
        dataset_drift=True,
        rows_current=600,
        rows_reference=20_000,
    )
    return drift_event(
        champion_version="3",
        window=Window(id=window_id, start=now - timedelta(hours=1), end=now, rows=600),
        summary=summary,
        report_path=f"reports/drift-v3-{window_id}.html",
        model_name=MODEL,
        reason="drift share 0.67 >= 0.30 (longitude, latitude)",
        occurred=now,
    )


def stored_events(prefect_api: str, ids: list[str]) -> list[dict[str, Any]]:
    """The events Prefect's event store holds with these ids (``POST /events/filter``)."""
    response = httpx.post(
        f"{prefect_api}/events/filter",
        json={"filter": {"id": {"id": ids}}, "limit": 50},
        timeout=30.0,
    )
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def wait_until_stored(prefect_api: str, wanted_id: str) -> dict[str, Any]:
    """The stored event with this id, once Prefect's persister has written it."""
    deadline = time.monotonic() + STORED_DEADLINE_SECONDS
    while True:
        found = stored_events(prefect_api, [wanted_id])
        if found:
            [event] = found
            return event
        if time.monotonic() > deadline:
            raise AssertionError(f"event {wanted_id} not in Prefect's event store")
        time.sleep(0.5)


def undelivered(
    api: str, event: dict[str, Any], *, attempts: int, caplog: pytest.LogCaptureFixture
) -> tuple[str, list[str]]:
    """``emit``'s ``DeliveryError`` message, and the attempts its warnings counted ("1/2")."""
    with (
        caplog.at_level(logging.WARNING, logger="lakeloop.events"),
        pytest.raises(DeliveryError) as failed,
    ):
        emit(api, event, attempts=attempts)
    message = str(failed.value)
    assert message.startswith(f"Prefect at {api} did not accept event {event['id']}")
    warnings = attempt_warnings(caplog, event)
    return message, [warning.split(", attempt ")[1].split(":")[0] for warning in warnings]


def attempt_warnings(caplog: pytest.LogCaptureFixture, event: dict[str, Any]) -> list[str]:
    """The warnings ``emit`` logged about this event, one per failed attempt."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "lakeloop.events"
        and record.levelno == logging.WARNING
        and event["id"] in record.getMessage()
    ]


def test_an_accepted_event_is_in_prefects_event_store_by_its_id(
    prefect_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    event = a_drift_event("accepted")
    with caplog.at_level(logging.WARNING, logger="lakeloop.events"):
        emit(prefect_api, event, attempts=1)
    assert attempt_warnings(caplog, event) == []

    stored = wait_until_stored(prefect_api, event["id"])
    assert stored["id"] == event["id"] == event_id(DRIFT_DETECTED, MODEL, "3", "accepted")
    assert stored["event"] == DRIFT_DETECTED
    assert stored["resource"] == event["resource"]
    # What the retrain trigger hands to the retrain flow arrives as it was sent.
    assert stored["payload"] == event["payload"]

    # The monitor re-run on the same window sends the same event: accepted again, and Prefect
    # keeps one event per id.
    emit(prefect_api, event, attempts=1)
    assert [again["id"] for again in stored_events(prefect_api, [event["id"]])] == [event["id"]]


def test_an_event_prefect_refuses_is_a_delivery_error_after_every_attempt(
    prefect_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Prefect's Event schema refuses a resource without ``prefect.resource.id`` (422): the event
    # names no resource a trigger could match.
    event = copy.deepcopy(a_drift_event("refused"))
    del event["resource"]["prefect.resource.id"]

    message, attempts = undelivered(prefect_api, event, attempts=2, caplog=caplog)

    assert "HTTP 422" in message
    assert "prefect.resource.id" in message  # Prefect's own reason, passed on
    assert attempts == ["1/2", "2/2"]
    # Refused at validation, before anything is published: nothing of it is stored.
    assert stored_events(prefect_api, [event["id"]]) == []


def test_an_unreachable_prefect_is_a_delivery_error_after_every_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    event = a_drift_event("unreachable")

    message, attempts = undelivered(closed, event, attempts=3, caplog=caplog)

    assert "ConnectError" in message
    assert attempts == ["1/3", "2/3", "3/3"]
