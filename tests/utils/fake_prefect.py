"""A stand-in for the one Prefect endpoint the gateway calls: ``POST /api/events``.

It speaks the real wire format (a JSON list of events, 204 on success) and can be told to fail,
so the gateway's delivery checks are tested without starting a 230 MB server in unit tests. The
integration and end-to-end tests use the real Prefect server.

It records every event it accepted, repeats included (real Prefect would drop a repeated id), so
a test can tell how many times the gateway delivered an event.
"""

from __future__ import annotations

import threading
from typing import Any

from litestar import Litestar, Request, post
from litestar.response import Response


class FakePrefectEvents:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.failures_left = 0
        """Answer 503 to this many requests, then accept again."""
        self.down = False
        """Answer 503 to every request while set (a server that is up but not ready)."""
        self.refuse_with: int | None = None
        """Answer every request with this status (``422``: Prefect refusing a malformed event)."""
        self.requests = 0
        self._lock = threading.Lock()

    def ids(self) -> list[str]:
        """Ids of the accepted events, in arrival order, repeats included."""
        with self._lock:
            return [event["id"] for event in self.events]

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
            return Response(None, status_code=204)

        return Litestar(route_handlers=[create_events])
