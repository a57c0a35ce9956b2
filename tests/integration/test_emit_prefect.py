"""The monitor's sender of the drift event (``lakeloop.events.emit``) against a real Prefect server
on loopback, started once for the module: an event it accepts is then readable from Prefect's
own events API by its id; an event it refuses (a 422 from Prefect's validation) and a Prefect
nobody listens for end in ``DeliveryError`` after the configured attempts, one logged warning
per attempt, and never in another exception."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from lakeloop.events import DRIFT_DETECTED, DeliveryError, emit, event_id
from lakeloop.settings import load_settings
from tests.utils.net import free_port
from tests.utils.prefect_events import a_drift_event, stored_events, wait_until_stored
from tooling.stack import Stack, services

pytestmark = pytest.mark.integration

MODEL = "housing-price"


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
    event = a_drift_event("accepted", model_name=MODEL)
    with caplog.at_level(logging.WARNING, logger="lakeloop.events"):
        emit(prefect_api, event, attempts=1)
    assert attempt_warnings(caplog, event) == []

    stored = wait_until_stored(prefect_api, event["id"])
    assert stored["id"] == event["id"] == event_id(DRIFT_DETECTED, MODEL, "3", "accepted")
    assert stored["event"] == DRIFT_DETECTED
    assert stored["resource"] == event["resource"]
    # What the retrain trigger hands to the retrain flow arrives as it was sent.
    assert stored["payload"] == event["payload"]
    # That Prefect drops the same event sent again (one event, one retrain run) is proven against
    # the deployment's trigger: tests/integration/test_events_real_prefect.py.


def test_an_event_prefect_refuses_is_a_delivery_error_after_every_attempt(
    prefect_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Prefect's Event schema refuses a resource without ``prefect.resource.id`` (422): the event
    # names no resource a trigger could match.
    event = copy.deepcopy(a_drift_event("refused", model_name=MODEL))
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
    event = a_drift_event("unreachable", model_name=MODEL)

    message, attempts = undelivered(closed, event, attempts=3, caplog=caplog)

    assert "ConnectError" in message
    assert attempts == ["1/3", "2/3", "3/3"]
