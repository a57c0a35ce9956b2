"""The gateway: receives lakeFS action webhooks and hands them to Prefect as events.

It answers 2xx only once Prefect accepted the event, so lakeFS records a failed hook run (and the
operator sees it) instead of a trigger silently lost.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Litestar, MediaType, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers import BaseRouteHandler
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_202_ACCEPTED,
    HTTP_400_BAD_REQUEST,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from lakeloop import events, lakefs_client
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.serving import serve
from lakeloop.settings import Settings, load_settings
from validation.checks import Validator

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Lakeloop-Token"  # noqa: S105 - a header name, not a secret


class Relayed(msgspec.Struct):
    """What the gateway did with a webhook."""

    relayed: bool
    event: str
    commit_id: str
    event_id: str | None = None
    detail: str = ""


class Verdict(msgspec.Struct):
    """The data checks' answer to a lakeFS pre-merge hook; a failure blocks the merge."""

    passed: bool
    tables: list[str]
    rows: int
    failures: list[str]
    detail: str


class Health(msgspec.Struct):
    status: str


class WarmValidator:
    """Builds the Great Expectations validator once (2-3 s), on a thread at start-up, so the first
    pre-merge hook does not pay for it; callers wait for it if it is not ready yet."""

    def __init__(self, spec: DatasetSpec) -> None:
        self._spec = spec
        self._lock = threading.Lock()
        self._validator: Validator | None = None

    def warm_up(self) -> None:
        threading.Thread(target=self.get, name="warm-validator", daemon=True).start()

    def get(self) -> Validator:
        with self._lock:
            if self._validator is None:
                self._validator = Validator(self._spec)
            return self._validator


def create_gateway(settings: Settings) -> Litestar:
    """The gateway app for these settings."""
    secret = settings.webhook_secret().encode()
    prefect_api = settings.prefect_api_url
    attempts = settings.gateway.delivery_attempts
    validator = WarmValidator(load_spec(settings.dataset))
    lakefs = lakefs_client.connect(settings)

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

    @post(
        "/webhooks/lakefs/validate",
        operation_id="validateLakeFSMerge",
        status_code=HTTP_200_OK,
        guards=[require_token],
        sync_to_thread=True,
    )
    def validate_merge(data: events.LakeFSWebhook) -> Response[str]:
        """Check the tables a merge would bring (lakeFS pre-merge hook); non-2xx blocks it.

        The answer is one line of text: lakeFS puts it into the error the merging client sees."""
        verdict = check_merge(lakefs, settings, validator.get, data)
        logger.info(
            "pre-merge %s -> %s/%s: %s",
            data.source_ref,
            data.repository_id,
            data.branch_id,
            verdict.detail,
        )
        return Response(
            verdict.detail,
            media_type=MediaType.TEXT,
            status_code=HTTP_200_OK if verdict.passed else HTTP_400_BAD_REQUEST,
        )

    @get("/healthz", operation_id="gatewayHealth")
    async def healthz() -> Health:
        """Liveness of the gateway process."""
        return Health(status="ok")

    return Litestar(
        route_handlers=[relay_lakefs_webhook, validate_merge, healthz],
        on_startup=[validator.warm_up],
    )


def check_merge(
    client: Any, settings: Settings, validator: Callable[[], Validator], hook: events.LakeFSWebhook
) -> Verdict:
    """Validate what merging ``hook.source_ref`` into ``hook.branch_id`` would add or change."""
    try:
        paths, frame = lakefs_client.read_changed_tables(
            client,
            settings,
            repository=hook.repository_id,
            base=hook.branch_id,
            head=hook.source_ref,
        )
    except lakefs_client.UnreadableTableError as error:
        return Verdict(passed=False, tables=[], rows=0, failures=[str(error)], detail=str(error))
    if not paths:
        return Verdict(passed=True, tables=[], rows=0, failures=[], detail="no tables changed")
    result = validator().validate(frame)
    where = ", ".join(paths)
    detail = (
        f"data checks passed on {result.rows} rows of {where}"
        if result.success
        else f"data checks failed on {where}: {'; '.join(result.failures)}"
    )
    return Verdict(
        passed=result.success,
        tables=paths,
        rows=result.rows,
        failures=result.failures,
        detail=detail,
    )


def main() -> None:
    """Serve the gateway on the configured loopback address."""
    settings = load_settings()
    serve(create_gateway(settings), host=settings.gateway.host, port=settings.gateway.port)


if __name__ == "__main__":
    main()
