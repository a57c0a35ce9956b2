"""The webhook gateway: secret check, event shape, and no event lost: each accepted event is
spooled on disk before the 2xx answer and delivered to Prefect (exactly once per id here) when
Prefect is up, when it comes back, or when the gateway starts again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from lakeloop.events import event_id
from lakeloop.gateway import TOKEN_HEADER, create_gateway
from lakeloop.settings import Settings, load_settings
from lakeloop.spool import Spool
from tests.utils.fake_prefect import FakePrefectEvents
from tests.utils.net import free_port, serve_in_thread

SECRET = "s3cret-for-tests-0123456789abcdef"
DEADLINE_SECONDS = 20.0


def eventually(check: Callable[[], bool], *, what: str) -> None:
    """Wait until ``check()`` holds; fail naming ``what`` after a generous deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_SECONDS} s: {what}")
        time.sleep(0.05)


def gateway_app(settings: Settings, prefect_api: str, *, spool: Spool | None = None) -> Litestar:
    """The gateway on ``settings``' state folder, retrying fast so tests need not wait."""
    configured = load_settings(
        state_dir=settings.state_dir,
        prefect={"api_url": prefect_api},
        gateway={"webhook_secret": SECRET},
    )
    return create_gateway(configured, spool=spool, first_retry_seconds=0.05, max_retry_seconds=0.2)


def pending_files(settings: Settings) -> list[Path]:
    return sorted((settings.state_dir / "spool" / "pending").glob("*.json"))


def hook(**changes: object) -> dict[str, object]:
    """A webhook body with lakeFS's field names, as lakeFS sends on a merge into main."""
    body: dict[str, object] = {
        "event_type": "post-merge",
        "event_time": "2026-11-23T10:00:00Z",
        "action_name": "lakeloop-train-trigger",
        "hook_id": "lakeloop_gateway",
        "repository_id": "housing",
        "branch_id": "main",
        "source_ref": "ingest-batch-1",
        "commit_id": "c0ffee" * 10 + "abcd",
        "commit_message": "publish batch-1",
        "committer": "lakeloop",
        "commit_metadata": {"rows": "100"},
    }
    return body | changes


@pytest.fixture
def prefect() -> Iterator[tuple[FakePrefectEvents, str]]:
    fake = FakePrefectEvents()
    with serve_in_thread(fake.app()) as url:
        yield fake, f"{url}/api"


@pytest.fixture
def gateway(settings: Settings, prefect: tuple[FakePrefectEvents, str]) -> Iterator[TestClient]:
    with TestClient(gateway_app(settings, prefect[1])) as client:
        yield client


def test_relays_merge_as_prefect_event_with_deterministic_id(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    response = gateway.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
    assert response.status_code == 202
    [event] = prefect[0].events
    assert event["event"] == "lakefs.post-merge"
    assert event["resource"]["prefect.resource.id"] == "lakefs.repository.housing"
    assert event["resource"]["lakefs.branch"] == "main"
    assert event["payload"]["commit_id"] == hook()["commit_id"]
    assert event["id"] == response.json()["event_id"]
    again = gateway.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
    assert again.json()["event_id"] == event["id"]


@pytest.mark.parametrize("headers", [{}, {TOKEN_HEADER: "wrong"}, {TOKEN_HEADER: SECRET + "x"}])
def test_wrong_or_missing_secret_is_refused_and_nothing_emitted(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str], headers: dict[str, str]
) -> None:
    response = gateway.post("/webhooks/lakefs", json=hook(), headers=headers)
    assert response.status_code == 401
    assert prefect[0].events == []


def test_prefect_refusing_then_accepting_is_retried_in_the_background(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str], settings: Settings
) -> None:
    prefect[0].failures_left = 2
    response = gateway.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
    assert response.status_code == 202
    assert response.json()["delivered"] is False
    eventually(lambda: not pending_files(settings), what="the spooled event delivered")
    assert prefect[0].ids() == [response.json()["event_id"]]


def test_prefect_down_webhook_is_spooled_answered_and_delivered_once_when_it_is_back(
    settings: Settings,
) -> None:
    port = free_port()  # nothing listens: connection refused, as with Prefect stopped
    fake = FakePrefectEvents()
    with TestClient(gateway_app(settings, f"http://127.0.0.1:{port}/api")) as client:
        response = client.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
        assert response.status_code == 202
        answer = response.json()
        assert answer["relayed"] is True
        assert answer["delivered"] is False
        # Spooled before the answer: the event is on disk, whole, under its id.
        [spooled] = pending_files(settings)
        assert spooled.stem == answer["event_id"]
        assert client.get("/healthz").json()["pending_events"] == 1
        with serve_in_thread(fake.app(), port=port):
            eventually(lambda: not pending_files(settings), what="delivery once Prefect is back")
            assert fake.ids() == [answer["event_id"]]
            assert fake.events[0]["payload"]["commit_id"] == hook()["commit_id"]
            assert client.get("/healthz").json()["pending_events"] == 0


def test_pending_events_are_delivered_when_the_gateway_starts_again(settings: Settings) -> None:
    port = free_port()
    down = f"http://127.0.0.1:{port}/api"
    with TestClient(gateway_app(settings, down)) as client:
        merge = client.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
        alert = client.post("/alerts/grafana", json=notification(grafana_alert()), headers=BEARER)
    assert merge.status_code == alert.status_code == 202
    expected = {merge.json()["event_id"], *alert.json()["event_ids"]}
    assert {path.stem for path in pending_files(settings)} == expected  # survived the stop

    fake = FakePrefectEvents()
    with serve_in_thread(fake.app(), port=port), TestClient(gateway_app(settings, down)):
        # No request to the new gateway: it drains the spool on start by itself.
        eventually(lambda: not pending_files(settings), what="delivery on start")
    assert sorted(fake.ids()) == sorted(expected)


def test_a_repeated_webhook_while_prefect_is_down_is_one_event(settings: Settings) -> None:
    port = free_port()
    fake = FakePrefectEvents()
    with TestClient(gateway_app(settings, f"http://127.0.0.1:{port}/api")) as client:
        ids = {
            client.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET}).json()[
                "event_id"
            ]
            for _ in range(3)
        }
        assert len(ids) == 1
        assert len(pending_files(settings)) == 1
        with serve_in_thread(fake.app(), port=port):
            eventually(lambda: not pending_files(settings), what="delivery once Prefect is back")
    assert fake.ids() == list(ids)


def test_a_full_spool_is_503_so_the_sender_sees_the_failure(settings: Settings) -> None:
    spool = Spool(settings.state_dir / "spool", max_events=1)
    down = f"http://127.0.0.1:{free_port()}/api"
    with TestClient(gateway_app(settings, down, spool=spool)) as client:
        first = client.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
        other = hook(commit_id="d" * 64)
        refused = client.post("/webhooks/lakefs", json=other, headers={TOKEN_HEADER: SECRET})
        alert = client.post("/alerts/grafana", json=notification(grafana_alert()), headers=BEARER)
        again = client.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
    assert first.status_code == 202
    assert refused.status_code == alert.status_code == 503
    assert "spool" in refused.text
    assert "full" in refused.text
    assert again.status_code == 202  # the event already spooled takes no more room
    assert [path.stem for path in pending_files(settings)] == [first.json()["event_id"]]


def test_an_event_prefect_refuses_as_malformed_is_quarantined_not_retried_forever(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str], settings: Settings
) -> None:
    prefect[0].refuse_with = 422
    response = gateway.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
    assert response.status_code == 202
    quarantine = settings.state_dir / "spool" / "quarantine"
    eventually(lambda: any(quarantine.glob("*.json")), what="the refused event quarantined")
    assert pending_files(settings) == []
    prefect[0].refuse_with = None
    ok = gateway.post(
        "/webhooks/lakefs", json=hook(commit_id="e" * 64), headers={TOKEN_HEADER: SECRET}
    )
    assert ok.json()["delivered"] is True  # one poisoned event does not block the others


def test_commit_marked_skip_training_is_acknowledged_not_relayed(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    body = hook(event_type="post-commit", commit_metadata={"lakeloop.skip_training": "true"})
    response = gateway.post("/webhooks/lakefs", json=body, headers={TOKEN_HEADER: SECRET})
    assert response.status_code == 202
    assert response.json()["relayed"] is False
    assert prefect[0].events == []


def test_malformed_body_is_rejected_naming_the_field(gateway: TestClient) -> None:
    body = hook()
    del body["repository_id"]
    response = gateway.post("/webhooks/lakefs", json=body, headers={TOKEN_HEADER: SECRET})
    assert response.status_code == 400
    assert "repository_id" in response.text


def test_event_ids_differ_per_commit_and_type() -> None:
    first = event_id("lakefs.post-merge", "housing", "main", "a" * 64)
    assert first == event_id("lakefs.post-merge", "housing", "main", "a" * 64)
    assert first != event_id("lakefs.post-merge", "housing", "main", "b" * 64)
    assert first != event_id("lakefs.post-commit", "housing", "main", "a" * 64)


def test_secret_is_checked_before_the_body_is_read(gateway: TestClient) -> None:
    response = gateway.post("/webhooks/lakefs", content=b"not json", headers={TOKEN_HEADER: "x"})
    assert response.status_code == 401


# Grafana alerts ------------------------------------------------------------------------------


def grafana_alert(status: str = "firing", **changes: object) -> dict[str, object]:
    """One alert as Grafana's unified alerting webhook sends it."""
    alert: dict[str, object] = {
        "status": status,
        "labels": {
            "alertname": "LakeloopDriftAboveThreshold",
            "lakeloop_action": "retrain",
            "model_version": "3",
            "severity": "warning",
        },
        "annotations": {"summary": "50% of the features drifted for champion v3"},
        "startsAt": "2026-11-23T10:00:00.157076+01:00",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://grafana:3000/alerting/grafana/drift/view",
        "fingerprint": "c6eadffa33fcdf37",
        "silenceURL": "http://grafana:3000/alerting/silence/new",
        "dashboardURL": "",
        "panelURL": "",
        "values": {"B": 0.5, "C": 1},
    }
    return alert | changes


def notification(*alerts: dict[str, object]) -> dict[str, object]:
    return {
        "receiver": "lakeloop-gateway",
        "status": "firing",
        "orgId": 1,
        "alerts": list(alerts),
        "groupLabels": {"alertname": "LakeloopDriftAboveThreshold"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://grafana:3000/",
        "version": "1",
        "groupKey": '{}:{alertname="LakeloopDriftAboveThreshold"}',
        "truncatedAlerts": 0,
        "title": "[FIRING:1] LakeloopDriftAboveThreshold",
        "state": "alerting",
        "message": "...",
    }


BEARER = {"Authorization": f"Bearer {SECRET}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {SECRET}x"},
        {"Authorization": f"Basic {SECRET}"},
        {TOKEN_HEADER: SECRET},
    ],
)
def test_alert_without_the_bearer_secret_is_refused(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str], headers: dict[str, str]
) -> None:
    response = gateway.post("/alerts/grafana", json=notification(grafana_alert()), headers=headers)
    assert response.status_code == 401
    assert prefect[0].events == []


def test_each_firing_alert_becomes_one_event_for_the_model(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    other = grafana_alert(
        fingerprint="bc97ff14869b13e3",
        labels={"alertname": "LakeloopApiServerErrors", "model_name": "other-model"},
    )
    response = gateway.post(
        "/alerts/grafana", json=notification(grafana_alert(), other), headers=BEARER
    )
    assert response.status_code == 202
    assert response.json()["relayed"] == 2
    drift, errors = prefect[0].events
    assert drift["event"] == errors["event"] == "lakeloop.alert.fired"
    assert drift["resource"]["prefect.resource.id"] == "lakeloop.model.housing-price"
    assert drift["resource"]["lakeloop.alert"] == "LakeloopDriftAboveThreshold"
    assert drift["resource"]["lakeloop.alert.action"] == "retrain"
    assert drift["payload"]["champion_version"] == "3"
    assert drift["payload"]["values"] == {"B": 0.5, "C": 1}
    assert drift["occurred"] == "2026-11-23T10:00:00.157076+01:00"
    assert errors["resource"]["prefect.resource.id"] == "lakeloop.model.other-model"
    assert errors["resource"]["lakeloop.alert.action"] == "notify"
    assert response.json()["event_ids"] == [drift["id"], errors["id"]]
    assert drift["id"] == event_id(
        "lakeloop.alert.fired", "c6eadffa33fcdf37", "2026-11-23T10:00:00.157076+01:00"
    )


def test_resolved_alerts_are_acknowledged_not_relayed(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    body = notification(grafana_alert("resolved", endsAt="2026-11-23T11:00:00Z"))
    response = gateway.post("/alerts/grafana", json=body, headers=BEARER)
    assert response.status_code == 202
    assert response.json() == {"relayed": 0, "ignored": 1, "event_ids": [], "delivered": 0}
    assert prefect[0].events == []


def test_the_same_alert_twice_is_the_same_event_and_a_new_start_is_a_new_one(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    for alert in (
        grafana_alert(),
        grafana_alert(),
        grafana_alert(startsAt="2026-11-24T10:00:00Z"),
    ):
        assert gateway.post("/alerts/grafana", json=notification(alert), headers=BEARER).is_success
    first, repeated, refired = (event["id"] for event in prefect[0].events)
    assert first == repeated
    assert refired != first


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"not json", "malformed"),
        (b'{"status": "firing"}', "alerts"),
        (b'{"status": "firing", "alerts": [{"status": "firing", "labels": {}}]}', "startsAt"),
        (
            b'{"status": "firing", "alerts": [{"status": "firing", "labels": {}, '
            b'"startsAt": "yesterday", "fingerprint": "f"}]}',
            "startsAt",
        ),
    ],
)
def test_malformed_notification_is_422_naming_the_problem(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str], body: bytes, named: str
) -> None:
    response = gateway.post("/alerts/grafana", content=body, headers=BEARER)
    assert response.status_code == 422
    assert named in response.json()["detail"]
    assert prefect[0].events == []


def test_prefect_down_an_alert_is_spooled_and_delivered_when_it_is_back(
    settings: Settings,
) -> None:
    port = free_port()
    fake = FakePrefectEvents()
    with TestClient(gateway_app(settings, f"http://127.0.0.1:{port}/api")) as client:
        response = client.post(
            "/alerts/grafana", json=notification(grafana_alert()), headers=BEARER
        )
        assert response.status_code == 202
        assert response.json()["delivered"] == 0
        with serve_in_thread(fake.app(), port=port):
            eventually(lambda: not pending_files(settings), what="delivery once Prefect is back")
    assert fake.ids() == response.json()["event_ids"]
    assert fake.events[0]["event"] == "lakeloop.alert.fired"
