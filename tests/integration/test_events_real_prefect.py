"""No event lost, none doubled, against a real Prefect server that the tests SIGKILL and start
again on the same database and port: what lakeFS and Grafana send through the gateway reaches
Prefect's event store once by its id and runs the deployment its trigger names once.

The server is one ``prefect server start`` for the module, with lakeloop's triggered deployments
registered as ``serve()`` registers them (their triggers included) but not served: a trigger that
fires leaves a flow run that stays Scheduled, and the tests count those runs per deployment and
read their parameters. The gateway runs in process, built as the product builds it
(``create_gateway``, the real sender pointed at that server) and driven through Litestar's test
client, whose lifespan starts and stops the background redelivery.

Where Prefect's de-duplication lives (Prefect 3.8, ``prefect/server/...``):

- ``POST /events`` publishes each event to an in-memory topic before it answers 204
  (``api/events.py:48``); the publisher drops an id it published in the last 5 minutes
  (``utilities/messaging/memory.py:257-284``, a ``TTLCache`` of 1000 ids in the process).
- The triggers service skips an event id it evaluated in the last 30 minutes
  (``events/triggers.py:1287``; ``events/ordering/memory.py:57``, another in-process
  ``TTLCache``).
- The event store inserts with ``ON CONFLICT DO NOTHING`` on the id
  (``events/storage/database.py:265``): one stored event per id, whenever it is sent.
- The flow run a trigger creates has the idempotency key ``automation, action, invocation``, where
  the invocation is a fresh uuid per firing (``events/schemas/automations.py:800-808``,
  ``events/actions.py:837``): nothing ties a run to the event id that fired it.

So a repeat is dropped before any trigger sees it only while the same server process remembers the
id; after a restart it is stored once and runs the deployment again (the last test here).

How "once" is asserted without a fixed wait: Prefect offers no "idle" signal, and a sentinel event
whose run is awaited is no barrier either: the triggers and actions services each take their
topic in 2 concurrent loops, and retry a message that failed (``utilities/messaging/memory.py:339,
371-383``; on SQLite "database is locked" is common), so an earlier event's run was seen to appear
3-4 s after a later sentinel's run (2 times in 10 here). The tests count instead the copies of an
event Prefect *publishes*, on its outbound event stream, up to a marker event published after
them (:class:`tests.utils.prefect_events.EventStream`): the triggers service evaluates only what
is published, so one copy is one evaluation, one firing, and one run (a firing's action keeps its
idempotency key when it is retried), and the one run can then be awaited.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.serve import declared, runner_deployment
from gateway.app import TOKEN_HEADER, NotifiedAlert, alert_event, create_gateway
from gateway.spool import Spool
from lakeloop.events import LakeFSWebhook, emit, lakefs_event
from lakeloop.loop import FlowRun, flow_runs
from lakeloop.settings import Settings, load_settings
from tests.utils.net import free_port
from tests.utils.prefect_events import (
    EventStream,
    a_drift_event,
    event_stream,
    stored_events,
    wait_until_stored,
)
from tests.utils.waiting import eventually
from tooling.stack import Running, Stack, port_is_free, services

pytestmark = pytest.mark.integration

SECRET = "s3cret-for-tests-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {SECRET}"}
PREFECT_DEADLINE_SECONDS = 120.0
"""How long Prefect may take to deliver, persist an event and fire its trigger, or to start, on a
loaded machine."""
POLL_SECONDS = 0.5
"""How often a test asks Prefect again (each question is a database query on a shared machine)."""
TRAIN = "train-on-commit"
RETRAIN = "retrain-on-drift"


@dataclass
class PrefectServer:
    """One real ``prefect server start`` on a loopback port and a SQLite database in its state
    folder, which a test can SIGKILL and start again on the same database and port."""

    settings: Settings
    stack: Stack
    running: Running | None = None
    deployments: dict[str, str] = field(default_factory=dict)
    """Deployment name -> id, for the deployments that have triggers."""

    @property
    def api(self) -> str:
        return self.settings.prefect_api_url

    def start(self, **env: str) -> None:
        """Start it (``env``: Prefect settings for this run only) and wait until it answers."""
        [service] = [s for s in services(self.settings) if s.name == "prefect"]
        self.running = self.stack.start(dataclasses.replace(service, env=service.env | env))
        self.stack.wait(self.running)

    def kill(self) -> None:
        """SIGKILL the server's process group, as a crash or the OOM killer would: nothing of
        what it holds in memory survives, nothing is flushed on the way out."""
        assert self.running is not None
        os.killpg(self.running.process.pid, signal.SIGKILL)
        self.running.process.wait(timeout=30)
        self.stack.running.remove(self.running)
        self.running = None
        port = self.settings.prefect.port
        eventually(lambda: port_is_free(port), what=f"Prefect's port {port} released")

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """Prefect SIGKILLed for the block, then started again on the same database and port."""
        self.kill()
        try:
            yield
        finally:
            self.start()

    def runs(self, deployment: str, **parameters: str) -> list[FlowRun]:
        """The flow runs of this deployment whose parameters include these values."""
        body = {"deployments": {"id": {"any_": [self.deployments[deployment]]}}}
        return [
            run
            for run in flow_runs(self.settings, body)
            if all(run.parameters.get(key) == value for key, value in parameters.items())
        ]

    def wait_for_run(self, deployment: str, **parameters: str) -> None:
        """Return once this deployment has a flow run with these parameters."""
        eventually(
            lambda: bool(self.runs(deployment, **parameters)),
            what=f"a {deployment} flow run with {parameters}",
            timeout=PREFECT_DEADLINE_SECONDS,
            interval=POLL_SECONDS,
        )

    def stream(self, event_ids: list[str]) -> AbstractContextManager[EventStream]:
        """Prefect's outbound event stream of these events, listening when the block starts."""
        return event_stream(self.api, event_ids)


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    settings = load_settings(
        state_dir=tmp_path_factory.mktemp("events") / "state",
        prefect={"port": free_port()},
        gateway={"webhook_secret": SECRET},
    )
    server = PrefectServer(settings, Stack(settings))
    try:
        server.start()
        server.deployments = register_deployments(settings)
        wait_until_triggers_fire(server)
        yield server
    finally:
        server.stack.down()


def register_deployments(settings: Settings) -> dict[str, str]:
    """lakeloop's deployments that have triggers, registered with them as ``serve()`` does, but
    with nothing serving them; deployment name -> id."""
    with temporary_settings({PREFECT_API_URL: settings.prefect_api_url}):
        return {
            deployment.name: str(runner_deployment(deployment).apply())
            for deployment in declared(settings)
            if deployment.triggers
        }


def wait_until_triggers_fire(server: PrefectServer) -> None:
    """Return once each of the three triggers has fired once: the triggers service loads new
    automations on its own schedule (every 5 s on SQLite), not when they are created."""
    settings = server.settings
    commit = a_commit()
    emit(server.api, merge_event(settings, commit))
    drift = a_drift_event(f"warm-up-{secrets.token_hex(4)}", model_name=settings.mlflow.model_name)
    emit(server.api, drift)
    alert = msgspec.convert(firing_alert(settings, secrets.token_hex(8)), type=NotifiedAlert)
    fired = alert_event(alert, default_model=settings.mlflow.model_name, receiver="warm-up")
    emit(server.api, fired)
    server.wait_for_run(TRAIN, commit_id=commit)
    server.wait_for_run(RETRAIN, window_id=drift["payload"]["window_id"])
    server.wait_for_run(RETRAIN, window_id=fired["payload"]["window_id"])


def a_commit() -> str:
    """A new lakeFS commit id (64 hex)."""
    return secrets.token_hex(32)


def merge_webhook(settings: Settings, commit_id: str) -> dict[str, Any]:
    """The body lakeFS POSTs when a merge lands on the production branch (lakeFS's field names)."""
    return {
        "event_type": "post-merge",
        "event_time": datetime.now(UTC).isoformat(),
        "action_name": "lakeloop-train-trigger",
        "hook_id": "lakeloop_gateway",
        "repository_id": settings.lakefs.repository,
        "branch_id": settings.lakefs.branch,
        "source_ref": "ingest-batch-1",
        "commit_id": commit_id,
        "commit_message": "publish batch-1",
        "committer": "lakeloop",
        "commit_metadata": {"rows": "100"},
    }


def merge_event(settings: Settings, commit_id: str) -> dict[str, Any]:
    """The event the gateway relays that merge webhook as (its id is fixed by the commit)."""
    return lakefs_event(msgspec.convert(merge_webhook(settings, commit_id), type=LakeFSWebhook))


def firing_alert(settings: Settings, fingerprint: str) -> dict[str, Any]:
    """One firing alert as Grafana's unified alerting sends it, asking lakeloop to retrain."""
    return {
        "status": "firing",
        "labels": {
            "alertname": "LakeloopDriftAboveThreshold",
            "lakeloop_action": "retrain",
            "model_name": settings.mlflow.model_name,
            "model_version": "3",
            "severity": "warning",
        },
        "annotations": {"summary": "50% of the features drifted for champion v3"},
        "startsAt": datetime.now(UTC).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://grafana:3000/alerting/grafana/drift/view",
        "fingerprint": fingerprint,
    }


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    """The body a Grafana webhook contact point POSTs."""
    return {"receiver": "lakeloop-gateway", "status": "firing", "alerts": list(alerts)}


def gateway_app(
    settings: Settings, spool_folder: Path, *, confirm_deadline_seconds: float | None = None
) -> Litestar:
    """The gateway as the product builds it, its sender and its event store lookup on the real
    Prefect server; its retries capped at 1 s so a test does not wait out the product's 30 s
    backoff, and the store asked every 0.5 s (the product: every 5 s)."""
    if confirm_deadline_seconds is not None:
        settings = settings.model_copy(
            update={
                "gateway": settings.gateway.model_copy(
                    update={"confirm_deadline_seconds": confirm_deadline_seconds}
                )
            }
        )
    return create_gateway(
        settings,
        spool=Spool(spool_folder),
        first_retry_seconds=0.2,
        max_retry_seconds=1.0,
        confirm_seconds=0.5,
    )


def pending(spool_folder: Path) -> list[str]:
    """Ids of the events spooled and not yet accepted by Prefect."""
    return sorted(path.stem for path in (spool_folder / "pending").glob("*.json"))


def sent(spool_folder: Path) -> list[str]:
    """Ids of the events Prefect accepted and its event store has not shown the gateway yet."""
    return sorted(path.stem for path in (spool_folder / "sent").glob("*.json"))


def wait_until_confirmed(spool_folder: Path) -> None:
    """Until the gateway has seen every event it holds in Prefect's event store (and deleted it)."""
    eventually(
        lambda: not pending(spool_folder) and not sent(spool_folder),
        what="every spooled event in Prefect's event store, and the spool empty",
        timeout=PREFECT_DEADLINE_SECONDS,
        interval=POLL_SECONDS,
    )


def wait_until_delivered(spool_folder: Path) -> None:
    eventually(
        lambda: not pending(spool_folder),
        what="every spooled event accepted by Prefect",
        timeout=PREFECT_DEADLINE_SECONDS,
        interval=POLL_SECONDS,
    )


def post_webhook(gateway: TestClient[Litestar], body: dict[str, Any]) -> dict[str, Any]:
    response = gateway.post("/webhooks/lakefs", json=body, headers={TOKEN_HEADER: SECRET})
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def stored_ids(prefect: PrefectServer, event_id: str) -> list[str]:
    """The ids Prefect's event store holds for this event id, once it holds it."""
    wait_until_stored(prefect.api, event_id)
    return [event["id"] for event in stored_events(prefect.api, [event_id])]


def test_a_webhook_sent_while_prefect_is_down_is_delivered_once_and_trains_once(
    prefect: PrefectServer, tmp_path: Path
) -> None:
    """A merge webhook that arrives while Prefect is SIGKILLed is answered 202 and spooled; the
    gateway, still running, hands it over once Prefect is started again on the same database:
    the event is in Prefect's store once by its id and the training deployment has one flow run
    for that commit. Real Prefect server.

    (The copies Prefect publishes are not counted here: the gateway may deliver before a stream
    could listen. A repeat within one Prefect process is shown dropped in
    ``test_a_repeated_webhook_is_published_once_and_trains_once``.)"""
    commit = a_commit()
    spool = tmp_path / "spool"
    with TestClient(gateway_app(prefect.settings, spool)) as gateway:
        with prefect.stopped():
            answer = post_webhook(gateway, merge_webhook(prefect.settings, commit))
            assert answer["relayed"] is True
            assert answer["delivered"] is False
            assert pending(spool) == [answer["event_id"]]
            assert gateway.get("/healthz").json()["pending_events"] == 1
        wait_until_delivered(spool)
        assert gateway.get("/healthz").json()["pending_events"] == 0

    assert answer["event_id"] == merge_event(prefect.settings, commit)["id"]
    assert stored_ids(prefect, answer["event_id"]) == [answer["event_id"]]
    prefect.wait_for_run(TRAIN, commit_id=commit)
    [run] = prefect.runs(TRAIN, commit_id=commit)
    assert run.parameters == {
        "repository": prefect.settings.lakefs.repository,
        "commit_id": commit,
        "reason": "lakefs.post-merge",
    }


def test_events_pending_when_the_gateway_restarts_are_delivered_once_with_no_new_request(
    prefect: PrefectServer, tmp_path: Path
) -> None:
    """Events a gateway spooled while Prefect was SIGKILLed, and still held when it stopped, are
    delivered by the next gateway on the same spool as soon as it starts, without a request, once
    Prefect is back on the same database: Prefect publishes each once, stores it once by its id,
    and each commit has one training flow run. Real Prefect server."""
    commits = [a_commit(), a_commit()]
    spool = tmp_path / "spool"
    with prefect.stopped():
        with TestClient(gateway_app(prefect.settings, spool)) as first:
            answers = [post_webhook(first, merge_webhook(prefect.settings, c)) for c in commits]
        assert [answer["delivered"] for answer in answers] == [False, False]
        ids = [answer["event_id"] for answer in answers]
        assert pending(spool) == sorted(ids)

    with prefect.stream(ids) as stream, TestClient(gateway_app(prefect.settings, spool)):
        wait_until_delivered(spool)  # no request to this gateway: it drains the spool on start
        stream.barrier()
    assert [stream.copies(event_id) for event_id in ids] == [1, 1]
    assert [stored_ids(prefect, event_id) for event_id in ids] == [[event_id] for event_id in ids]
    for commit in commits:
        prefect.wait_for_run(TRAIN, commit_id=commit)
    assert [len(prefect.runs(TRAIN, commit_id=commit)) for commit in commits] == [1, 1]


def test_an_alert_fired_while_prefect_is_down_runs_one_retrain_when_it_is_back(
    prefect: PrefectServer, tmp_path: Path
) -> None:
    """A Grafana alert labelled ``lakeloop_action=retrain`` for the model, fired while Prefect is
    SIGKILLed, is answered 202 and spooled; once Prefect is back on the same database the
    gateway hands it over: it is in the store once by its id and the retrain deployment has one
    flow run for it, with the alert's champion version. Real Prefect server."""
    fingerprint = secrets.token_hex(8)
    spool = tmp_path / "spool"
    with TestClient(gateway_app(prefect.settings, spool)) as gateway:
        with prefect.stopped():
            response = gateway.post(
                "/alerts/grafana",
                json=notification(firing_alert(prefect.settings, fingerprint)),
                headers=BEARER,
            )
            assert response.status_code == 202, response.text
            answer = response.json()
            assert (answer["relayed"], answer["delivered"]) == (1, 0)
            assert pending(spool) == answer["event_ids"]
        wait_until_delivered(spool)

    [event_id] = answer["event_ids"]
    window = wait_until_stored(prefect.api, event_id)["payload"]["window_id"]
    assert window.startswith(f"alert-{fingerprint}-")
    assert stored_ids(prefect, event_id) == [event_id]
    prefect.wait_for_run(RETRAIN, window_id=window)
    [run] = prefect.runs(RETRAIN, window_id=window)
    assert run.parameters == {
        "champion_version": "3",
        "window_id": window,
        "reason": "lakeloop.alert.fired",
    }


def test_a_repeated_webhook_is_published_once_and_trains_once(
    prefect: PrefectServer, tmp_path: Path
) -> None:
    """The same commit's webhook sent twice while Prefect is up is accepted twice, but Prefect
    publishes it once (it drops the repeat by its id before answering), stores it once, and
    the training deployment has one flow run for the commit. Real Prefect server."""
    commit = a_commit()
    event_id = merge_event(prefect.settings, commit)["id"]
    with (
        prefect.stream([event_id]) as stream,
        TestClient(gateway_app(prefect.settings, tmp_path / "spool")) as gateway,
    ):
        first = post_webhook(gateway, merge_webhook(prefect.settings, commit))
        again = post_webhook(gateway, merge_webhook(prefect.settings, commit))
        stream.barrier()
    assert first["event_id"] == again["event_id"] == event_id
    assert (first["delivered"], again["delivered"]) == (True, True)
    # One copy published is one evaluation by the triggers service, one firing, one run: the
    # run-deployment action of a firing keeps its idempotency key when it is retried.
    assert stream.copies(event_id) == 1
    assert stored_ids(prefect, event_id) == [event_id]
    prefect.wait_for_run(TRAIN, commit_id=commit)
    assert len(prefect.runs(TRAIN, commit_id=commit)) == 1


def test_the_same_drift_event_sent_twice_is_published_once_and_retrains_once(
    prefect: PrefectServer,
) -> None:
    """The monitor re-run on the same window sends the same drift event again, and ``emit``
    sees both accepted: Prefect publishes it once, stores it once by its id, and the retrain
    deployment has one flow run for that window. Real Prefect server."""
    model_name = prefect.settings.mlflow.model_name
    event = a_drift_event(f"window-{secrets.token_hex(4)}", model_name=model_name)
    with prefect.stream([event["id"]]) as stream:
        emit(prefect.api, event, attempts=1)
        emit(prefect.api, event, attempts=1)
        stream.barrier()
    assert stream.copies(event["id"]) == 1
    assert stored_ids(prefect, event["id"]) == [event["id"]]
    window = event["payload"]["window_id"]
    prefect.wait_for_run(RETRAIN, window_id=window)
    [run] = prefect.runs(RETRAIN, window_id=window)
    assert run.parameters["champion_version"] == "3"
    assert run.parameters["reason"] == "lakeloop.drift.detected"


def test_prefect_restarted_forgets_event_ids_so_a_repeated_webhook_trains_again(
    prefect: PrefectServer, tmp_path: Path
) -> None:
    """Prefect remembers the ids it drops repeats of only in memory: SIGKILLed and started again,
    it publishes the same webhook's event again, still stores it once, and the training trigger
    makes a second flow run for the commit. This is why the training flow itself trains a commit
    once (RELIABILITY.md, "the same webhook twice (Prefect forgot its ids after a restart)"); the
    day Prefect keeps the ids across a restart, this test says so. Real Prefect server."""
    commit = a_commit()
    event_id = merge_event(prefect.settings, commit)["id"]
    spool = tmp_path / "spool"
    with (
        prefect.stream([event_id]) as before,
        TestClient(gateway_app(prefect.settings, spool)) as gateway,
    ):
        first = post_webhook(gateway, merge_webhook(prefect.settings, commit))
        before.barrier()
        # Stored and forgotten by the gateway: the repeat below is a new delivery, not a copy
        # still waiting for Prefect's store (which the gateway would not send twice).
        wait_until_confirmed(spool)
    prefect.wait_for_run(TRAIN, commit_id=commit)
    with prefect.stopped():
        pass
    with (
        prefect.stream([event_id]) as after,
        TestClient(gateway_app(prefect.settings, spool)) as gateway,
    ):
        again = post_webhook(gateway, merge_webhook(prefect.settings, commit))
        after.barrier()
    assert first["event_id"] == again["event_id"] == event_id
    assert (first["delivered"], again["delivered"]) == (True, True)
    assert (before.copies(event_id), after.copies(event_id)) == (1, 1)
    assert stored_ids(prefect, event_id) == [event_id]
    # Two copies published, one per process: two evaluations at most, so two runs at most.
    eventually(
        lambda: len(prefect.runs(TRAIN, commit_id=commit)) >= 2,
        what="a second training run for the commit",
        timeout=PREFECT_DEADLINE_SECONDS,
        interval=POLL_SECONDS,
    )
    assert len(prefect.runs(TRAIN, commit_id=commit)) == 2


def test_a_delivered_webhook_is_confirmed_in_prefects_store_and_leaves_the_spool_empty(
    prefect: PrefectServer, tmp_path: Path
) -> None:
    """Prefect's 204 does not end the gateway's care: the event waits under ``sent/`` until the
    gateway finds it in Prefect's event store (``POST /events/filter`` by id, with its own
    ``occurred`` window), then its file is deleted; it was sent once. Real Prefect server."""
    commit = a_commit()
    spool = tmp_path / "spool"
    event_id = merge_event(prefect.settings, commit)["id"]
    with (
        prefect.stream([event_id]) as stream,
        TestClient(gateway_app(prefect.settings, spool)) as gateway,
    ):
        answer = post_webhook(gateway, merge_webhook(prefect.settings, commit))
        assert answer["delivered"] is True
        wait_until_confirmed(spool)
        health = gateway.get("/healthz").json()
        stream.barrier()
    assert (health["pending_events"], health["unconfirmed_events"]) == (0, 0)
    assert stream.copies(event_id) == 1
    assert stored_ids(prefect, event_id) == [event_id]
    prefect.wait_for_run(TRAIN, commit_id=commit)


LOSING_PERSISTER = {
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "3600",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "1000",
}
"""A Prefect whose event persister holds what it receives for an hour (or 1000 events) before it
writes: SIGKILLed within that, it has answered 204 for events it never stored. The persister
writes only when its queue reaches the batch size or at its interval, and on a clean shutdown,
never on SIGKILL (``events/services/event_persister.py``, ``create_handler``): so the loss is
certain, not a matter of killing within the default 5 s."""


def test_an_event_prefect_accepted_and_lost_when_killed_is_sent_again_and_stored(
    prefect: PrefectServer, tmp_path: Path
) -> None:
    """Prefect accepts a merge webhook's event with 204 and is SIGKILLed before its persister
    writes it: after Prefect starts again the store does not have it, and the gateway (started
    again too, on the same spool, with no new request) finds it missing past its deadline, sends
    it again under the same id, and deletes it once stored; the commit gets its training run.
    (The first Prefect may already have fired the trigger before it died: the commit may have
    two runs, which the training flow's own check makes one training.) Real Prefect server."""
    commit = a_commit()
    spool = tmp_path / "spool"
    prefect.kill()
    prefect.start(**LOSING_PERSISTER)
    try:
        with TestClient(gateway_app(prefect.settings, spool)) as gateway:
            answer = post_webhook(gateway, merge_webhook(prefect.settings, commit))
            assert answer["delivered"] is True
            assert sent(spool) == [answer["event_id"]]
    finally:
        prefect.kill()
        prefect.start()
    event_id = answer["event_id"]
    assert stored_events(prefect.api, [event_id]) == []  # lost with the killed process
    assert sent(spool) == [event_id]  # but not by the gateway

    with TestClient(gateway_app(prefect.settings, spool, confirm_deadline_seconds=5.0)):
        wait_until_confirmed(spool)
    assert stored_ids(prefect, event_id) == [event_id]
    prefect.wait_for_run(TRAIN, commit_id=commit)
