"""The webhook gateway: secret check, event shape, and no event lost: each accepted event is
spooled on disk before the 2xx answer and delivered to Prefect (exactly once per id here) when
Prefect is up, when it comes back, or when the gateway starts again; and kept until Prefect's
event store holds it, sent again when Prefect accepted it but never stored it."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from gateway.app import (
    MAX_BODY_BYTES,
    TOKEN_HEADER,
    MergeWebhook,
    create_gateway,
    webhook_problems,
)
from gateway.spool import Spool
from lakeloop.events import event_id
from lakeloop.settings import Settings, load_settings
from tests.utils.fake_prefect import FakePrefectEvents
from tests.utils.net import free_port, serve_in_thread
from tests.utils.swagger import assert_swagger_page_loads_only_its_own_files
from tests.utils.waiting import DEADLINE_SECONDS, eventually

SECRET = "s3cret-for-tests-0123456789abcdef"


def gateway_app(
    settings: Settings,
    prefect_api: str,
    *,
    spool: Spool | None = None,
    confirm_seconds: float = 0.05,
    confirm_deadline_seconds: float | None = None,
) -> Litestar:
    """The gateway on ``settings``' state folder, retrying and asking Prefect's event store fast
    so tests need not wait; the product's confirmation deadline unless one is given."""
    configured = load_settings(
        state_dir=settings.state_dir,
        prefect={"api_url": prefect_api},
        gateway={"webhook_secret": SECRET, "confirm_deadline_seconds": confirm_deadline_seconds},
    )
    return create_gateway(
        configured,
        spool=spool,
        first_retry_seconds=0.05,
        max_retry_seconds=0.2,
        confirm_seconds=confirm_seconds,
    )


def pending_files(settings: Settings) -> list[Path]:
    return sorted((settings.state_dir / "spool" / "pending").glob("*.json"))


def sent_files(settings: Settings) -> list[Path]:
    """Events Prefect accepted that its event store has not shown yet."""
    return sorted((settings.state_dir / "spool" / "sent").glob("*.json"))


def spool_is_empty(settings: Settings) -> bool:
    return not pending_files(settings) and not sent_files(settings)


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


LAKEFS_WEBHOOKS = Path(__file__).parent / "fixtures" / "lakefs_webhooks"


@pytest.mark.parametrize("kind", ["post-merge", "post-commit"])
def test_what_lakefs_itself_sends_is_relayed(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str], kind: str
) -> None:
    """Bodies as lakeFS 1.x writes them (fixtures/lakefs_webhooks): empty fields omitted (a commit
    without metadata has no ``commit_metadata``), ``merge_source`` and the merge-strategy key."""
    body = json.loads((LAKEFS_WEBHOOKS / f"{kind}.json").read_text())
    response = gateway.post("/webhooks/lakefs", json=body, headers={TOKEN_HEADER: SECRET})
    assert response.status_code == 202, response.text
    [event] = prefect[0].events
    assert event["event"] == f"lakefs.{kind}"
    assert event["payload"]["commit_id"] == body["commit_id"]


def test_what_lakefs_sends_to_the_pre_merge_hook_is_a_well_formed_merge() -> None:
    body = (LAKEFS_WEBHOOKS / "pre-merge.json").read_bytes()
    hook = msgspec.json.decode(body, type=MergeWebhook)
    assert webhook_problems(hook, relayed=False) == []
    assert hook.merge_source.startswith("ingest-batch-1-")
    assert hook.source_ref != hook.commit_id  # the source commit, not the merge to be


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
            eventually(lambda: spool_is_empty(settings), what="delivery once Prefect is back")
            assert fake.ids() == [answer["event_id"]]
            assert fake.stored_ids() == [answer["event_id"]]
            assert fake.events[0]["payload"]["commit_id"] == hook()["commit_id"]
            health = client.get("/healthz").json()
            assert (health["pending_events"], health["unconfirmed_events"]) == (0, 0)


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
        eventually(lambda: spool_is_empty(settings), what="delivery on start, confirmed")
    assert sorted(fake.ids()) == sorted(expected)
    assert sorted(fake.stored_ids()) == sorted(expected)


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


# Hostile input: refused with a 4xx naming the problem, nothing spooled, nothing emitted -------


def nothing_stored_or_sent(settings: Settings, prefect: FakePrefectEvents) -> None:
    spool = settings.state_dir / "spool"
    assert pending_files(settings) == []
    assert list((spool / "quarantine").glob("*")) == []
    assert prefect.requests == 0


def as_json(body: dict[str, object]) -> bytes:
    return json.dumps(body).encode()


HOSTILE_WEBHOOKS = {
    "not json": (b"{'event_type': post-merge", "malformed"),
    "empty body": (b"", "data"),  # Litestar names the missing body `data`
    "a list, not an object": (b"[]", "object"),
    "missing field": (as_json({k: v for k, v in hook().items() if k != "branch_id"}), "branch_id"),
    "commit id a number": (as_json(hook(commit_id=1234)), "commit_id"),
    "metadata values not strings": (as_json(hook(commit_metadata={"rows": 5})), "commit_metadata"),
    "unknown event type": (as_json(hook(event_type="post-delete-branch")), "event_type"),
    "pre-merge to the relay": (as_json(hook(event_type="pre-merge")), "event_type"),
    "no commit id": (as_json(hook(commit_id="")), "commit_id"),
    "commit id escaping a folder": (as_json(hook(commit_id="../../../etc/passwd")), "commit_id"),
    "commit id with NUL": (as_json(hook(commit_id="c0ffee" * 10 + "ab\x00d")), "commit_id"),
    "repository escaping a folder": (as_json(hook(repository_id="../housing")), "repository_id"),
    "repository with NUL": (as_json(hook(repository_id="hous\x00ing")), "repository_id"),
    "branch with a slash": (as_json(hook(branch_id="main/../x")), "branch_id"),
    "source ref escaping": (as_json(hook(source_ref="ingest/../../x")), "source_ref"),
}


@pytest.mark.parametrize(("body", "named"), HOSTILE_WEBHOOKS.values(), ids=list(HOSTILE_WEBHOOKS))
def test_a_hostile_webhook_is_refused_naming_the_problem_and_nothing_is_stored_or_sent(
    gateway: TestClient,
    prefect: tuple[FakePrefectEvents, str],
    settings: Settings,
    body: bytes,
    named: str,
) -> None:
    headers = {TOKEN_HEADER: SECRET, "Content-Type": "application/json"}
    response = gateway.post("/webhooks/lakefs", content=body, headers=headers)
    assert response.status_code == 400
    assert named in response.text
    nothing_stored_or_sent(settings, prefect[0])


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"repository_id": "../housing"}, "repository_id"),
        ({"branch_id": "main\x00"}, "branch_id"),
        ({"source_ref": "../../ingest"}, "source_ref"),
    ],
)
def test_a_pre_merge_hook_with_hostile_ids_is_refused_before_any_lakefs_read(
    gateway: TestClient,
    prefect: tuple[FakePrefectEvents, str],
    settings: Settings,
    changes: dict[str, str],
    named: str,
) -> None:
    body = hook(event_type="pre-merge", **changes)
    response = gateway.post("/webhooks/lakefs/validate", json=body, headers={TOKEN_HEADER: SECRET})
    assert response.status_code == 400
    assert named in response.text
    nothing_stored_or_sent(settings, prefect[0])


def raw_post(url: str, path: str, head: dict[str, str], first_bytes: bytes) -> tuple[int, str]:
    """POST over a plain socket: the request line, ``head``, then only ``first_bytes`` of the
    body (never the rest); returns the status and body the server answered with anyway."""
    address = httpx.URL(url)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {address.host}",
        *(f"{k}: {v}" for k, v in head.items()),
    ]
    with socket.create_connection(
        (address.host, address.port or 80), timeout=DEADLINE_SECONDS
    ) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + first_bytes)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = conn.recv(65536)  # a timeout here fails the test: no answer without the body
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode()


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.parametrize(
    ("path", "auth"),
    [
        ("/webhooks/lakefs", {TOKEN_HEADER: SECRET}),
        ("/alerts/grafana", {"Authorization": f"Bearer {SECRET}"}),
    ],
    ids=["lakefs", "grafana"],
)
def test_an_oversized_body_is_413_before_it_is_read(
    prefect: tuple[FakePrefectEvents, str], settings: Settings, path: str, auth: dict[str, str]
) -> None:
    """A 100 MB Content-Length is refused at once: the answer comes although only 16 bytes of the
    body were ever sent (had the gateway tried to read it all, the socket would time out)."""
    with serve_in_thread(gateway_app(settings, prefect[1])) as url:
        head = {**auth, "Content-Type": "application/json", "Content-Length": str(100 * 2**20)}
        status, body = raw_post(url, path, head, b'{"event_type": "')
    assert status == 413
    assert f"larger than {MAX_BODY_BYTES} bytes" in body
    nothing_stored_or_sent(settings, prefect[0])


def test_a_streamed_body_is_413_as_soon_as_it_passes_the_limit(
    prefect: tuple[FakePrefectEvents, str], settings: Settings
) -> None:
    """No Content-Length (chunked): the gateway counts while reading and stops past the limit,
    without waiting for the end of a body that never ends."""
    chunk = b"x" * 65536
    stream = b"".join(
        b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // len(chunk) + 2)
    )
    with serve_in_thread(gateway_app(settings, prefect[1])) as url:
        head = {
            TOKEN_HEADER: SECRET,
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        }
        status, body = raw_post(url, "/webhooks/lakefs", head, stream)  # no final 0-chunk
    assert status == 413
    assert f"larger than {MAX_BODY_BYTES} bytes" in body
    nothing_stored_or_sent(settings, prefect[0])


def test_a_body_just_under_the_limit_is_read(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    """The limit refuses only what is over it: a webhook padded to just under it is relayed."""
    body = hook()
    padding = MAX_BODY_BYTES - len(as_json(body)) - 100
    body["commit_message"] = "x" * padding
    response = gateway.post("/webhooks/lakefs", json=body, headers={TOKEN_HEADER: SECRET})
    assert response.status_code == 202
    assert len(prefect[0].events) == 1


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
    """One alert as Grafana's unified alerting webhook sends it: Alertmanager's fields (its own
    start, source and fingerprint) plus Grafana's extras."""
    alert = alertmanager_alert(
        status,
        startsAt="2026-11-23T10:00:00.157076+01:00",
        generatorURL="http://grafana:3000/alerting/grafana/drift/view",
        fingerprint="c6eadffa33fcdf37",
    )
    grafana_only = {
        "silenceURL": "http://grafana:3000/alerting/silence/new",
        "dashboardURL": "",
        "panelURL": "",
        "values": {"B": 0.5, "C": 1},
    }
    return alert | grafana_only | changes


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
    assert response.json() == {
        "relayed": 0,
        "ignored": 1,
        "event_ids": [],
        "delivered": 0,
        "refused_retrains": [],
    }
    assert prefect[0].events == []


def test_the_same_alert_twice_is_the_same_event_and_a_new_start_is_a_new_one(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    answers = [
        gateway.post("/alerts/grafana", json=notification(alert), headers=BEARER)
        for alert in (
            grafana_alert(),
            grafana_alert(),
            grafana_alert(startsAt="2026-11-24T10:00:00Z"),
        )
    ]
    assert all(answer.is_success for answer in answers)
    [first], [repeated], [refired] = (answer.json()["event_ids"] for answer in answers)
    assert first == repeated
    assert refired != first
    # The repeat arrived while the first copy waited for Prefect's store: it was not sent again.
    assert sorted(prefect[0].ids()) == sorted([first, refired])


def grafana_nothing_measured_alerts() -> list[dict[str, object]]:
    """What Grafana sends for the drift rule when its query finds no series or fails, as its
    state manager builds them (``pkg/services/ngalert/state/compat.go``): the rule's labels,
    ``lakeloop_action`` included, under ``alertname`` DatasourceNoData / DatasourceError with the
    rule's name in ``rulename``; or, with ``noDataState``/``execErrState`` set to ``Alerting`` or
    ``KeepLast``, the rule's own name with ``grafana_state_reason`` saying why."""
    rule_labels = {"alertname": "LakeloopDriftAboveThreshold", "lakeloop_action": "retrain"}
    renamed = {"rulename": "LakeloopDriftAboveThreshold", "datasource_uid": "lakeloop-prometheus"}
    return [
        grafana_alert(
            fingerprint="a1a1a1a1a1a1a1a1",
            labels=rule_labels | renamed | {"alertname": "DatasourceNoData"},
        ),
        grafana_alert(
            fingerprint="b2b2b2b2b2b2b2b2",
            labels=rule_labels | renamed | {"alertname": "DatasourceError"},
        ),
        grafana_alert(
            fingerprint="c3c3c3c3c3c3c3c3",
            labels=rule_labels,
            annotations={"grafana_state_reason": "NoData"},
        ),
        grafana_alert(
            fingerprint="d4d4d4d4d4d4d4d4",
            labels=rule_labels,
            annotations={"grafana_state_reason": "Error, KeepLast"},
        ),
    ]


def test_grafana_no_data_and_error_alerts_never_retrain_even_when_labelled(
    gateway: TestClient,
    prefect: tuple[FakePrefectEvents, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A missing series or a failing query measured no drift: each such alert is still relayed
    (an event a person's automation may read) but as ``notify``, which no trigger matches, and the
    answer and the log say which alert was refused as a retrain and why. A measured drift in the
    same notification still retrains."""
    nothing_measured = grafana_nothing_measured_alerts()
    body = notification(*nothing_measured, grafana_alert())
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        response = gateway.post("/alerts/grafana", json=body, headers=BEARER)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["relayed"] == 5
    refused = answer["refused_retrains"]
    assert [line.split(":")[0] for line in refused] == [
        alert["fingerprint"] for alert in nothing_measured
    ]
    assert "DatasourceNoData from rule LakeloopDriftAboveThreshold" in refused[0]
    assert "DatasourceError from rule LakeloopDriftAboveThreshold" in refused[1]
    assert "grafana_state_reason=NoData" in refused[2]
    assert "grafana_state_reason=Error, KeepLast" in refused[3]
    assert "not a retrain" in caplog.text
    eventually(lambda: len(prefect[0].events) == 5, what="every alert relayed")
    actions = {
        event["resource"]["lakeloop.alert.fingerprint"]: event["resource"]["lakeloop.alert.action"]
        for event in prefect[0].events
    }
    assert actions == {
        "a1a1a1a1a1a1a1a1": "notify",
        "b2b2b2b2b2b2b2b2": "notify",
        "c3c3c3c3c3c3c3c3": "notify",
        "d4d4d4d4d4d4d4d4": "notify",
        "c6eadffa33fcdf37": "retrain",
    }
    reasons = {event["payload"]["retrain_refused"] for event in prefect[0].events}
    assert None in reasons
    assert len(reasons) == 5


def test_a_state_reason_that_measured_something_still_retrains(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    """Only NoData and Error mean nothing was measured: a drift alert Grafana annotates for
    another reason (a rule ``Updated``) still asks for a retrain."""
    updated = grafana_alert(annotations={"grafana_state_reason": "Updated"})
    response = gateway.post("/alerts/grafana", json=notification(updated), headers=BEARER)
    assert response.json()["refused_retrains"] == []
    [event] = prefect[0].events
    assert event["resource"]["lakeloop.alert.action"] == "retrain"


def alertmanager_notification(
    *alerts: dict[str, object], truncated: int = 0, status: str = "firing"
) -> dict[str, object]:
    """The body Alertmanager's webhook receiver POSTs, field for field as its own source writes
    it: ``notify/webhook/webhook.go`` (``Message``: ``template.Data`` inlined, ``version`` "4",
    ``groupKey``, ``truncatedAlerts``) and ``template/template.go`` (``Data``, ``Alert``; since
    v0.29 also ``notification_reason`` and ``routeLabels``). Times are Go's RFC 3339 with
    nanoseconds; a firing alert's ``endsAt`` is the zero time."""
    return {
        "receiver": "lakeloop-gateway",
        "status": status,
        "alerts": list(alerts),
        "groupLabels": {"alertname": "LakeloopDriftAboveThreshold"},
        "commonLabels": {"alertname": "LakeloopDriftAboveThreshold", "lakeloop_action": "retrain"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}/{lakeloop_action="retrain"}:{alertname="LakeloopDriftAboveThreshold"}',
        "truncatedAlerts": truncated,
        "notification_reason": "",
        "routeLabels": {},
    }


def alertmanager_alert(status: str = "firing", **changes: object) -> dict[str, object]:
    """One alert as Alertmanager forwards it from Prometheus's drift rule (no ``values``)."""
    alert: dict[str, object] = {
        "status": status,
        "labels": {
            "alertname": "LakeloopDriftAboveThreshold",
            "lakeloop_action": "retrain",
            "model_version": "3",
            "severity": "warning",
        },
        "annotations": {"summary": "50% of the features drifted for champion v3"},
        "startsAt": "2026-11-30T16:03:20.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=lakeloop%3Adrift_share%3Achampion",
        "fingerprint": "8d6fa4e30b6c4f10",
    }
    return alert | changes


def test_an_alertmanager_notification_becomes_one_event_per_firing_alert(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    """Alertmanager's version 4 body, at its own route: the retrain alert is an event for the
    model asking to retrain, an unlabelled one an event asking nothing (no trigger matches it), a
    resolved one nothing; nanoseconds in ``startsAt`` are read (to the microsecond)."""
    notify = alertmanager_alert(
        fingerprint="17b2c3d4e5f60718",
        labels={"alertname": "LakeloopApiServerErrors", "severity": "critical"},
    )
    resolved = alertmanager_alert("resolved", fingerprint="0a0b0c0d0e0f1011")
    body = alertmanager_notification(alertmanager_alert(), notify, resolved)
    response = gateway.post("/alerts/alertmanager", json=body, headers=BEARER)
    assert response.status_code == 202, response.text
    assert (response.json()["relayed"], response.json()["ignored"]) == (2, 1)
    retrain, other = prefect[0].events
    assert retrain["event"] == other["event"] == "lakeloop.alert.fired"
    assert retrain["resource"]["prefect.resource.id"] == "lakeloop.model.housing-price"
    assert retrain["resource"]["lakeloop.alert.action"] == "retrain"
    assert retrain["resource"]["lakeloop.alert.fingerprint"] == "8d6fa4e30b6c4f10"
    assert retrain["occurred"] == "2026-11-30T16:03:20.123457+00:00"
    assert retrain["payload"]["receiver"] == "lakeloop-gateway"
    assert retrain["payload"]["values"] is None
    assert retrain["id"] == event_id(
        "lakeloop.alert.fired", "8d6fa4e30b6c4f10", "2026-11-30T16:03:20.123457+00:00"
    )
    assert other["resource"]["lakeloop.alert.action"] == "notify"


def test_alertmanager_and_grafana_are_read_by_one_decoder(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    """Either body at either route gives the same event for the same alert: one shape, two
    names for the senders' configurations."""
    alert = alertmanager_alert()
    answers = [
        gateway.post(route, json=body, headers=BEARER).json()["event_ids"]
        for route in ("/alerts/alertmanager", "/alerts/grafana")
        for body in (alertmanager_notification(alert), notification(alert))
    ]
    assert len({tuple(ids) for ids in answers}) == 1


def test_an_alertmanager_repeat_is_the_same_event_and_a_new_firing_a_new_one(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    """Alertmanager resends a firing group every ``repeat_interval`` with the alert's first
    ``startsAt``: the same event, sent to Prefect once; the alert resolved and firing again has a
    new ``startsAt``: a new event."""
    bodies = [
        alertmanager_notification(alertmanager_alert()),
        alertmanager_notification(alertmanager_alert()),
        alertmanager_notification(alertmanager_alert(startsAt="2026-11-30T18:00:05.5Z")),
    ]
    answers = [gateway.post("/alerts/alertmanager", json=b, headers=BEARER) for b in bodies]
    [first], [repeated], [refired] = (answer.json()["event_ids"] for answer in answers)
    assert first == repeated
    assert refired != first
    eventually(lambda: sorted(prefect[0].ids()) == sorted([first, refired]), what="both sent")


def test_alerts_an_alertmanager_receiver_left_out_are_logged(
    gateway: TestClient,
    prefect: tuple[FakePrefectEvents, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``truncatedAlerts`` counts the alerts a receiver's ``max_alerts`` cut: they never reach
    the gateway, so it says so instead of passing over it."""
    body = alertmanager_notification(alertmanager_alert(), truncated=2)
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        response = gateway.post("/alerts/alertmanager", json=body, headers=BEARER)
    assert response.status_code == 202
    assert "left out 2 alerts" in caplog.text


def test_an_alertmanager_notification_without_the_bearer_secret_is_refused(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str]
) -> None:
    body = alertmanager_notification(alertmanager_alert())
    for headers in ({}, {"Authorization": "Bearer wrong"}, {TOKEN_HEADER: SECRET}):
        response = gateway.post("/alerts/alertmanager", json=body, headers=headers)
        assert response.status_code == 401
    assert prefect[0].events == []


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


# Prefect answers before it stores: the gateway keeps each event until the store shows it ------


def test_a_stored_event_is_deleted_once_prefects_store_shows_it(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str], settings: Settings
) -> None:
    response = gateway.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
    event_id = response.json()["event_id"]
    assert response.json()["delivered"] is True
    eventually(lambda: spool_is_empty(settings), what="the event confirmed and deleted")
    assert prefect[0].ids() == [event_id]  # sent once
    assert prefect[0].stored_ids() == [event_id]
    assert [event_id] in prefect[0].lookups


class Lines(logging.Handler):
    """The messages logged to one logger (Litestar's logging set-up replaces pytest's capture
    while a test client runs)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def spool_log() -> Iterator[Lines]:
    logger = logging.getLogger("gateway.spool")
    lines, level = Lines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(lines)
    logger.setLevel(level)


def test_an_event_prefect_accepts_but_never_stores_is_sent_again_then_deleted_once_stored(
    settings: Settings, prefect: tuple[FakePrefectEvents, str], spool_log: Lines
) -> None:
    """Prefect answers 204 and is killed before its persister writes: the gateway keeps the
    event as sent (healthz says so), sends it again once the deadline passed with the store still
    lacking it, with a log line naming it and why, and deletes it only once the store holds it."""
    fake, api = prefect
    fake.loses_accepted = True
    with TestClient(gateway_app(settings, api, confirm_deadline_seconds=0.3)) as client:
        response = client.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
        event_id = response.json()["event_id"]
        assert response.json()["delivered"] is True
        eventually(lambda: fake.ids().count(event_id) >= 2, what="the event sent again")
        # Kept, not deleted: as sent most of the time (pending only while it is sent again).
        eventually(
            lambda: client.get("/healthz").json()["unconfirmed_events"] == 1,
            what="healthz counting the event as sent, not confirmed",
        )
        eventually(
            lambda: [path.stem for path in sent_files(settings)] == [event_id],
            what="the event kept under sent/",
        )
        assert fake.stored_ids() == []
        fake.loses_accepted = False
        eventually(lambda: spool_is_empty(settings), what="deleted once stored")
        assert client.get("/healthz").json()["unconfirmed_events"] == 0
    assert fake.stored_ids() == [event_id]
    again = [line for line in spool_log.messages if line.startswith(f"sending event {event_id}")]
    assert len(again) == fake.ids().count(event_id) - 1  # one line per time it was sent again
    assert all(line.endswith("s ago, not in Prefect's event store") for line in again)


def test_a_restarted_gateway_confirms_or_sends_again_the_events_a_previous_one_sent(
    settings: Settings, prefect: tuple[FakePrefectEvents, str]
) -> None:
    """A gateway stopped while two accepted events wait for Prefect's store (one stored, one
    lost by a Prefect killed after its 204) leaves both on disk; the next gateway, with no
    request, deletes the stored one without sending it again and sends the lost one again."""
    fake, api = prefect
    never = 3600.0  # the first gateway never gets to ask the store
    with TestClient(gateway_app(settings, api, confirm_seconds=never)) as first:
        stored = first.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
        fake.loses_accepted = True
        lost = first.post(
            "/webhooks/lakefs", json=hook(commit_id="d" * 64), headers={TOKEN_HEADER: SECRET}
        )
        assert first.get("/healthz").json()["unconfirmed_events"] == 2
    ids = [stored.json()["event_id"], lost.json()["event_id"]]
    assert sorted(path.stem for path in sent_files(settings)) == sorted(ids)
    assert fake.lookups == []
    fake.loses_accepted = False
    with TestClient(gateway_app(settings, api, confirm_deadline_seconds=0.3)):
        eventually(lambda: spool_is_empty(settings), what="both confirmed on start")
    assert sorted(fake.ids()) == sorted([ids[0], ids[1], ids[1]])
    assert sorted(fake.stored_ids()) == sorted(ids)


def test_sent_events_not_yet_stored_count_towards_the_spool_bound(
    settings: Settings, prefect: tuple[FakePrefectEvents, str]
) -> None:
    fake, api = prefect
    fake.loses_accepted = True
    spool = Spool(settings.state_dir / "spool", max_events=1)
    with TestClient(gateway_app(settings, api, spool=spool)) as client:
        first = client.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
        assert first.json()["delivered"] is True
        other = hook(commit_id="d" * 64)
        refused = client.post("/webhooks/lakefs", json=other, headers={TOKEN_HEADER: SECRET})
        health = client.get("/healthz").json()
    assert refused.status_code == 503
    assert "1 sent and not yet in Prefect's event store" in refused.text
    assert (health["pending_events"], health["unconfirmed_events"]) == (0, 1)


def test_an_event_whose_clock_runs_ahead_is_still_found_in_the_store(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str], settings: Settings
) -> None:
    """An alert whose ``startsAt`` (the event's ``occurred``) is later than Prefect's clock
    is outside Prefect's default ``occurred`` window (until now): the lookup names its own."""
    alert = grafana_alert(startsAt="2099-01-01T00:00:00Z")
    response = gateway.post("/alerts/grafana", json=notification(alert), headers=BEARER)
    [event_id] = response.json()["event_ids"]
    eventually(lambda: spool_is_empty(settings), what="the future-dated event confirmed")
    assert prefect[0].ids() == [event_id]


def test_a_sent_events_file_says_when_it_was_sent(
    gateway: TestClient, prefect: tuple[FakePrefectEvents, str], settings: Settings
) -> None:
    prefect[0].loses_accepted = True
    before = time.time()
    gateway.post("/webhooks/lakefs", json=hook(), headers={TOKEN_HEADER: SECRET})
    [sent] = sent_files(settings)
    assert before - 1 <= os.stat(sent).st_mtime <= time.time() + 1


def test_the_swagger_page_loads_only_files_the_gateway_serves(gateway: TestClient) -> None:
    assert_swagger_page_loads_only_its_own_files(gateway)
    operations = {
        operation["operationId"]
        for path in gateway.get("/schema/openapi.json").json()["paths"].values()
        for operation in path.values()
    }
    assert operations == {
        "relayLakeFSWebhook",
        "validateLakeFSMerge",
        "relayGrafanaAlerts",
        "relayAlertmanagerAlerts",
        "gatewayHealth",
    }
