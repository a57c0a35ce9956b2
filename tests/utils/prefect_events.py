"""Events as lakeloop sends them to a real Prefect server, and Prefect's event store read back by
event id (``POST /events/filter``), for the integration tests that run ``prefect server start``."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from lakeloop.events import emit
from monitoring.events import drift_event
from monitoring.history import Window
from monitoring.parse import ColumnDrift, DriftSummary
from tests.utils.waiting import eventually

MARKER_EVENT = "lakeloop.test.marker"
"""The event :class:`EventStream` sends to know what Prefect published before it; no trigger
matches it."""
STORED_DEADLINE_SECONDS = 120.0
"""How long an accepted event may take to reach Prefect's event store (its persister writes in
batches, in the background, on a loaded machine)."""


def a_drift_event(window_id: str, *, model_name: str) -> dict[str, Any]:
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
        model_name=model_name,
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
    found: list[dict[str, Any]] = []

    def stored() -> bool:
        found[:] = stored_events(prefect_api, [wanted_id])
        return bool(found)

    eventually(
        stored,
        what=f"event {wanted_id} in Prefect's event store",
        timeout=STORED_DEADLINE_SECONDS,
        interval=0.5,
    )
    [event] = found
    return event


class EventStream:
    """Prefect's outbound event stream (``/events/out``, without backfill), read on a thread:
    every copy of these events that Prefect publishes from now on, repeats included, in the order
    it published them.

    Why it can count copies: ``POST /events`` publishes each event to the in-memory ``events``
    topic before it answers (``prefect/server/api/events.py:48``), dropping an id it published
    in the last 5 minutes (``utilities/messaging/memory.py:257-284``); the stream's distributor is
    one more subscriber of that topic whose handler never waits (``events/stream.py``,
    ``distributor``), so it forwards copies in the order they were published. The triggers
    service reads the same topic, and nothing else, for reactive triggers: a copy it is never
    published is a copy no trigger evaluates."""

    def __init__(
        self, prefect_api: str, event_ids: list[str], *, event_names: list[str] | None = None
    ) -> None:
        self.prefect_api = prefect_api
        self._marker_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
        self._received: list[str] = []
        self._lock = threading.Lock()
        url = prefect_api.replace("http://", "ws://", 1).rstrip("/") + "/events/out"
        self._socket = connect(url, subprotocols=[Subprotocol("prefect")], open_timeout=30)
        self._socket.send(json.dumps({"type": "auth", "token": None}))
        answer = json.loads(self._socket.recv(timeout=30))
        assert answer["type"] == "auth_success", answer
        now = datetime.now(UTC)
        # By id, or (when the ids are not known yet) by event name; the markers pass either.
        chosen: dict[str, Any] = (
            {"event": {"name": [*event_names, MARKER_EVENT]}}
            if event_names
            else {"id": {"id": [*event_ids, *self._marker_ids]}}
        )
        event_filter = {
            **chosen,
            # The server's default window ends when the filter arrives: later events would not pass.
            "occurred": {
                "since": (now - timedelta(hours=1)).isoformat(),
                "until": (now + timedelta(days=1)).isoformat(),
            },
        }
        self._socket.send(json.dumps({"type": "filter", "filter": event_filter, "backfill": False}))
        self._reader = threading.Thread(target=self._read, name="prefect-event-stream", daemon=True)
        self._reader.start()
        # The server subscribes once it has read the filter; a marker seen means it listens.
        self._published_marker(self._marker_ids[0])

    def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for message in self._socket:
                data = json.loads(message)
                if data.get("type") == "event":
                    with self._lock:
                        self._received.append(data["event"]["id"])

    def _published_marker(self, marker_id: str) -> None:
        """Send a marker event (one no trigger matches) and wait until the stream shows it."""
        emit(
            self.prefect_api,
            {
                "id": marker_id,
                "occurred": datetime.now(UTC).isoformat(),
                "event": MARKER_EVENT,
                "resource": {"prefect.resource.id": "lakeloop.test.event-stream"},
                "payload": {},
                "related": [],
            },
        )
        eventually(
            lambda: marker_id in self.received(),
            what=f"marker event {marker_id} on Prefect's event stream",
            timeout=STORED_DEADLINE_SECONDS,
        )

    def received(self) -> list[str]:
        """Ids of the copies published so far, in order."""
        with self._lock:
            return list(self._received)

    def copies(self, event_id: str) -> int:
        """How many copies of this event Prefect published (to this stream) until the last
        :meth:`barrier`."""
        received = self.received()
        return received[: received.index(self._marker_ids[1])].count(event_id)

    def barrier(self) -> None:
        """Return once every copy Prefect published before this call has reached the stream."""
        self._published_marker(self._marker_ids[1])

    def close(self) -> None:
        self._socket.close()
        self._reader.join(timeout=10)


@contextmanager
def event_stream(
    prefect_api: str, event_ids: list[str], *, event_names: list[str] | None = None
) -> Iterator[EventStream]:
    """An :class:`EventStream` of these events (or of every event with these names), listening
    when the block starts."""
    stream = EventStream(prefect_api, event_ids, event_names=event_names)
    try:
        yield stream
    finally:
        stream.close()
