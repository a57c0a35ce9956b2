"""A stand-in for the one Prefect endpoint the gateway calls: ``POST /api/events``.

It speaks the real wire format (a JSON list of events, 204 on success) and can be told to fail,
so the gateway's delivery checks are tested without starting a 230 MB server in unit tests. The
integration and end-to-end tests use the real Prefect server.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, post
from litestar.response import Response


class FakePrefectEvents:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.failures_left = 0

    def app(self) -> Litestar:
        @post("/api/events", status_code=204)
        async def create_events(request: Request[Any, Any, Any]) -> Response[None]:
            if self.failures_left > 0:
                self.failures_left -= 1
                return Response(None, status_code=503)
            self.events.extend(await request.json())
            return Response(None, status_code=204)

        return Litestar(route_handlers=[create_events])
