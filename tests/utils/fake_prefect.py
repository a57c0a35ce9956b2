"""A stand-in for the two Prefect endpoints the gateway calls: ``POST /api/events`` and
``POST /api/events/filter``.

It speaks the real wire format (a JSON list of events, 204 on success; a filter body answered with
an event page) and can be told to fail, so the gateway's delivery checks are tested without
starting a 230 MB server in unit tests. The integration and end-to-end tests use the real Prefect
server.

It records every event it accepted, repeats included (real Prefect would drop a repeated id), so
a test can tell how many times the gateway delivered an event. Its event store keeps one event per
id, as Prefect's does (``ON CONFLICT DO NOTHING``), and can be told to lose what it accepts:
Prefect answers 204 before its persister writes the event, so a server killed in between has
answered 204 for an event it never stores.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Litestar, Request, post
from litestar.response import Response

PAGE_LIMIT = 50
"""Most events ``/events/filter`` answers with (Prefect's ``INTERACTIVE_PAGE_SIZE``)."""


class FakePrefectEvents:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.stored: dict[str, dict[str, Any]] = {}
        """The event store: id -> the first copy stored."""
        self.failures_left = 0
        """Answer 503 to this many requests, then accept again."""
        self.down = False
        """Answer 503 to every request while set (a server that is up but not ready)."""
        self.refuse_with: int | None = None
        """Answer every request with this status (``422``: Prefect refusing a malformed event)."""
        self.loses_accepted = False
        """While set, accept events with 204 and never store them (Prefect killed after its 204,
        before its persister wrote them)."""
        self.requests = 0
        self.lookups: list[list[str]] = []
        """The ids of each ``/events/filter`` request, in order."""
        self._lock = threading.Lock()

    def ids(self) -> list[str]:
        """Ids of the accepted events, in arrival order, repeats included."""
        with self._lock:
            return [event["id"] for event in self.events]

    def stored_ids(self) -> list[str]:
        """Ids in the event store, in the order they were stored."""
        with self._lock:
            return list(self.stored)

    def app(self) -> Litestar:
        @post("/api/events", status_code=204)
        async def create_events(request: Request[Any, Any, Any]) -> Response[None]:
            with self._lock:
                self.requests += 1
                if self.refuse_with is not None:
                    return Response(None, status_code=self.refuse_with)
                if self.down or self.failures_left > 0:
                    self.failures_left = max(0, self.failures_left - 1)
                    return Response(None, status_code=503)
            received = await request.json()
            with self._lock:
                self.events.extend(received)
                if not self.loses_accepted:
                    for event in received:
                        self.stored.setdefault(event["id"], event)
            return Response(None, status_code=204)

        @post("/api/events/filter", status_code=200)
        async def read_events(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
            body = await request.json()
            with self._lock:
                if self.down:
                    return Response({}, status_code=503)
            limit = body.get("limit", PAGE_LIMIT)
            if not 0 <= limit <= PAGE_LIMIT:
                return Response({"detail": "limit"}, status_code=422)
            wanted = body["filter"]["id"]["id"]
            since, until = occurred_window(body["filter"].get("occurred", {}))
            with self._lock:
                self.lookups.append(list(wanted))
                found = [
                    self.stored[event_id]
                    for event_id in wanted
                    if event_id in self.stored
                    and since <= _parse(self.stored[event_id]["occurred"]) <= until
                ]
            return Response({"events": found[:limit], "total": len(found), "next_page": None})

        return Litestar(route_handlers=[create_events, read_events])


def occurred_window(given: dict[str, str]) -> tuple[datetime, datetime]:
    """The ``occurred`` window of a filter, with Prefect's defaults (``EventOccurredFilter``):
    from the start of today 180 days ago until now."""
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    since = _parse(given["since"]) if "since" in given else today - timedelta(days=180)
    until = _parse(given["until"]) if "until" in given else now
    return since, until


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment)
