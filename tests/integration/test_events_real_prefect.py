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

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from gateway.app import TOKEN_HEADER
from lakeloop.events import emit
from tests.utils.prefect_events import (
    a_drift_event,
    stored_events,
    wait_until_stored,
)
from tests.utils.prefect_server import (
    BEARER,
    POLL_SECONDS,
    PREFECT_DEADLINE_SECONDS,
    RETRAIN,
    SECRET,
    TRAIN,
    PrefectServer,
    a_commit,
    firing_alert,
    gateway_app,
    merge_event,
    merge_webhook,
    notification,
    triggered_prefect,
)
from tests.utils.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with triggered_prefect(tmp_path_factory.mktemp("events") / "state") as server:
        yield server


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
    """The monitor re-run on the same window builds the drift event again (later, so with a
    later time) and ``emit`` sees both accepted: the two have one id, Prefect publishes it
    once, stores it once, and the retrain deployment has one flow run for that window. Real
    Prefect server."""
    model_name = prefect.settings.mlflow.model_name
    window_id = f"window-{secrets.token_hex(4)}"
    event = a_drift_event(window_id, model_name=model_name)
    again = a_drift_event(window_id, model_name=model_name)
    assert again["id"] == event["id"]
    with prefect.stream([event["id"]]) as stream:
        emit(prefect.api, event, attempts=1)
        emit(prefect.api, again, attempts=1)
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
