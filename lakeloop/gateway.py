"""The gateway: receives lakeFS action webhooks and hands them to Prefect as events.

It answers 2xx only once Prefect accepted the event, so lakeFS records a failed hook run (and the
operator sees it) instead of a trigger silently lost.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import msgspec
from litestar import Litestar, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers import BaseRouteHandler
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_503_SERVICE_UNAVAILABLE

from lakeloop import events
from lakeloop.serving import serve
from lakeloop.settings import Settings, load_settings

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Lakeloop-Token"  # noqa: S105 - a header name, not a secret


class Relayed(msgspec.Struct):
    """What the gateway did with a webhook."""

    relayed: bool
    event: str
    commit_id: str
    event_id: str | None = None
    detail: str = ""


class Health(msgspec.Struct):
    status: str


def create_gateway(settings: Settings) -> Litestar:
    """The gateway app for these settings."""
    secret = settings.webhook_secret().encode()
    prefect_api = settings.prefect_api_url
    attempts = settings.gateway.delivery_attempts

    def require_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        """Refuse a request without the shared secret before its body is even read."""
        token = connection.headers.get(TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(token, secret):
            raise NotAuthorizedException(f"missing or wrong {TOKEN_HEADER} header")

    @post(
        "/webhooks/lakefs",
        operation_id="relayLakeFSWebhook",
        status_code=HTTP_202_ACCEPTED,
        guards=[require_token],
        sync_to_thread=True,
    )
    def relay_lakefs_webhook(data: events.LakeFSWebhook) -> Relayed:
        """Relay a lakeFS webhook to Prefect as an event with a deterministic id."""
        if data.commit_metadata.get(events.SKIP_TRAINING_KEY, "").lower() == "true":
            detail = f"commit metadata has {events.SKIP_TRAINING_KEY}=true"
            return Relayed(
                relayed=False, event=data.event_type, commit_id=data.commit_id, detail=detail
            )
        event = events.lakefs_event(data)
        try:
            events.emit(prefect_api, event, attempts=attempts)
        except events.DeliveryError as error:
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=str(error)
            ) from error
        logger.info(
            "relayed %s on %s/%s commit %s as event %s",
            event["event"],
            data.repository_id,
            data.branch_id,
            data.commit_id,
            event["id"],
        )
        return Relayed(
            relayed=True, event=event["event"], commit_id=data.commit_id, event_id=event["id"]
        )

    @get("/healthz", operation_id="gatewayHealth")
    async def healthz() -> Health:
        """Liveness of the gateway process."""
        return Health(status="ok")

    return Litestar(route_handlers=[relay_lakefs_webhook, healthz])


def main() -> None:
    """Serve the gateway on the configured loopback address."""
    settings = load_settings()
    serve(create_gateway(settings), host=settings.gateway.host, port=settings.gateway.port)


if __name__ == "__main__":
    main()
