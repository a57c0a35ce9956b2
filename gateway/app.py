"""The gateway: receives lakeFS action webhooks and alert notifications (Alertmanager's webhook
receiver, Grafana's webhook contact point) and hands them to Prefect as events.

An accepted event is first written to a durable spool on disk (:mod:`gateway.spool`), then
handed to Prefect; the gateway answers 2xx once the event is spooled, whether or not Prefect took
it yet. Why not answer only once Prefect accepted, as it used to: lakeFS runs post-commit and
post-merge hooks after the commit exists and only logs their failure (it never retries), so an
error answer there loses the trigger just the same, only more loudly. With the spool the event
survives Prefect being down or restarting, and the gateway itself restarting: a background loop
retries with a bounded backoff until Prefect accepts, starting with what a previous process left.
Prefect answers 2xx before its event store has the event, so the gateway keeps it until the store
shows it (``POST /api/events/filter`` by id), and sends it again if the store still lacks it a
deadline later: Prefect killed after its 204 loses nothing either (:mod:`gateway.spool`).
Event ids are deterministic, so a redelivery is harmless to Prefect's de-duplication.

The gateway answers 503 only when it cannot store the event (the spool is full or the disk
refuses the write): lakeFS then logs a failed hook; Alertmanager and Grafana retry the
notification.
Pre-merge hooks stay synchronous: their answer is the data checks' verdict, nothing is spooled.

Input is refused before anything is stored: a body over :data:`MAX_BODY_BYTES` with 413 (before
it is read), a body that is not the expected JSON, an event type lakeloop does not relay, or an id
lakeFS itself would never send (the ids become event resources, flow parameters and folder names)
with 400 naming the field.
"""

from __future__ import annotations

import hmac
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import BaseRouteHandler
from litestar.logging.config import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_202_ACCEPTED,
    HTTP_400_BAD_REQUEST,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_503_SERVICE_UNAVAILABLE,
)

import lakeloop
from gateway.spool import (
    CONFIRM_DEADLINE_SECONDS,
    CONFIRM_EVERY_SECONDS,
    Delivery,
    Redelivery,
    Sender,
    Spool,
    SpoolError,
    StoredLookup,
)
from lakeloop import events, lakefs_client
from lakeloop.datagate import DataGate, verdict_store
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.settings import Settings
from lakeloop.swagger import SCHEMA_PATH, swagger_assets, swagger_page
from lakeloop.validation.checks import Validator, warm_validator

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Lakeloop-Token"  # noqa: S105 - a header name, not a secret
"""Header carrying the shared secret on lakeFS webhooks (alerts carry it as a Bearer token)."""
ACTION_LABEL = "lakeloop_action"
"""Alert label saying what lakeloop should do (``retrain``); a deployment trigger matches it."""
RETRAIN = "retrain"
NOTHING_MEASURED_ALERTS = frozenset({"DatasourceNoData", "DatasourceError"})
"""The alerts Grafana sends in place of a rule's own when its query returned no data or failed
(``pkg/services/ngalert/state/compat.go``: ``noDataAlert``, ``errorAlert``). They carry every
label of the rule, ``lakeloop_action`` included, with ``alertname`` replaced and the rule's name
in ``rulename``: a missing series or a failing query, never a measurement."""
STATE_REASON_ANNOTATION = "grafana_state_reason"
"""Grafana's annotation saying why an alert's state differs from its evaluation: ``NoData`` or
``Error`` when a rule's ``noDataState``/``execErrState`` (``Alerting``, ``KeepLast``) turned a
missing series or a failed query into a firing alert (``models.StateReason*``)."""
NOTHING_MEASURED_REASONS = frozenset({"NoData", "Error"})
SEND_TIMEOUT_SECONDS = 5.0
"""How long one attempt to hand an event to Prefect may take (a request waits for the first)."""
# Prefect answers these when the event itself is malformed: retrying it can never succeed.
MALFORMED_EVENT_STATUSES = frozenset({400, 413, 422})
MAX_BODY_BYTES = 1024 * 1024
"""Largest request body the gateway reads. A lakeFS webhook is about 1 kB and an alert
notification a few kB per alert; a larger body is refused with 413 from its Content-Length before
any of it is read, or as soon as a streamed body passes the limit."""
RELAYED_EVENT_TYPES = ("post-commit", "post-merge")
"""lakeFS hook events relayed to Prefect (the training triggers); others are refused."""
ANY_TIME = {
    "since": datetime(1970, 1, 1, tzinfo=UTC).isoformat(),
    "until": datetime(9999, 12, 31, tzinfo=UTC).isoformat(),
}
"""The ``occurred`` window of an event store lookup by id. Prefect's default window is the last
180 days up to *now* (``EventOccurredFilter``, ``prefect/server/events/filters.py``): an event
whose sender's clock runs ahead (its ``occurred`` is the webhook's or the alert's own time) would
never be found, and would be sent again forever."""


class Relayed(msgspec.Struct):
    """What the gateway did with a webhook."""

    relayed: bool
    """The event was accepted: stored in the spool, and delivered to Prefect now or later; kept
    until Prefect's event store holds it."""
    event: str
    commit_id: str
    event_id: str | None = None
    detail: str = ""
    delivered: bool = False
    """Prefect already accepted the event (2xx; the gateway still waits for its event store to
    show it); otherwise it waits in the spool for redelivery."""


class Verdict(msgspec.Struct):
    """The data checks' answer to a lakeFS pre-merge hook; a failure blocks the merge."""

    passed: bool
    tables: list[str]
    rows: int
    failures: list[str]
    detail: str


class GatewayHealth(msgspec.Struct):
    status: str
    pending_events: int = 0
    """Events spooled and not yet accepted by Prefect."""
    unconfirmed_events: int = 0
    """Events Prefect accepted (2xx) that its event store has not shown yet; each is sent again
    if still missing a deadline after it was sent."""


class NotifiedAlert(msgspec.Struct, kw_only=True):
    """One alert of a webhook notification: Alertmanager's ``template.Alert``
    (``template/template.go``) field for field; Grafana's webhook contact point sends a superset
    (``values``, ``silenceURL``, ...). Fields lakeloop does not read are ignored."""

    status: str
    """``firing`` or ``resolved``."""
    labels: dict[str, str]
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    starts_at: datetime = msgspec.field(name="startsAt")
    """When the alert started firing; the same on every repeat of one firing, new on the next."""
    fingerprint: str
    """Hash of the alert's label set (Alertmanager's ``model.Fingerprint``, Grafana's own)."""
    generator_url: str = msgspec.field(default="", name="generatorURL")
    values: dict[str, float | None] | None = None
    """Grafana only: the values of the rule's expressions."""


class AlertNotification(msgspec.Struct, kw_only=True):
    """The JSON body Alertmanager's webhook receiver POSTs (``webhook.Message``, version "4":
    ``template.Data`` plus ``version``, ``groupKey`` and ``truncatedAlerts``), which is also what
    Grafana's webhook contact point POSTs (version "1", with more fields)."""

    status: str
    """``firing`` if any alert of the group fires, else ``resolved``."""
    alerts: list[NotifiedAlert]
    receiver: str = ""
    """The receiver's name in the sender's configuration."""
    version: str = ""
    group_key: str = msgspec.field(default="", name="groupKey")
    """Which alert group this notification is about (the route and its ``group_by`` labels)."""
    truncated_alerts: int = msgspec.field(default=0, name="truncatedAlerts")
    """Alerts of the group left out because of the receiver's ``max_alerts``: never relayed."""


class AlertsRelayed(msgspec.Struct):
    """What the gateway did with a notification: one event per firing alert."""

    relayed: int
    """Firing alerts whose event was accepted (spooled, then delivered now or later)."""
    ignored: int
    """Resolved alerts: nothing to do."""
    event_ids: list[str]
    delivered: int = 0
    """Of the relayed events, those Prefect already accepted."""
    refused_retrains: list[str] = msgspec.field(default_factory=list)
    """Alerts labelled ``lakeloop_action=retrain`` relayed as ``notify`` instead, each with why
    (:func:`retrain_refusal`): Grafana's no-data and error alerts measured nothing."""


def retrain_refusal(alert: NotifiedAlert) -> str | None:
    """Why an alert labelled ``lakeloop_action=retrain`` must not retrain, else ``None``.

    Grafana copies a rule's labels onto the ``DatasourceNoData``/``DatasourceError`` alert it
    sends when the rule's query returns nothing or fails, and a rule whose ``noDataState`` or
    ``execErrState`` is ``Alerting`` or ``KeepLast`` fires under its own name with a
    ``grafana_state_reason`` of ``NoData``/``Error``. Either way nothing drifted: a stopped
    monitor or an unreachable Prometheus is a person's problem, and a retrain would not mend it."""
    if alert.labels.get(ACTION_LABEL) != RETRAIN:
        return None
    name = alert.labels.get("alertname", "")
    if name in NOTHING_MEASURED_ALERTS:
        rule = alert.labels.get("rulename", "an unnamed rule")
        return f"{name} from rule {rule}: Grafana got no data or an error, nothing was measured"
    reasons = {
        reason.strip() for reason in alert.annotations.get(STATE_REASON_ANNOTATION, "").split(",")
    }
    if reasons & NOTHING_MEASURED_REASONS:
        shown = alert.annotations[STATE_REASON_ANNOTATION]
        return f"{name} fires from {STATE_REASON_ANNOTATION}={shown}: nothing was measured"
    return None


def alert_event(alert: NotifiedAlert, *, default_model: str, receiver: str) -> dict[str, Any]:
    """The ``lakeloop.alert.fired`` event of one firing alert. Its id is a uuid5 of the alert's
    fingerprint and start: Alertmanager resending a firing group every ``repeat_interval`` (or
    Grafana repeating it) sends the same event, which Prefect drops, while the same alert firing
    again later starts anew and is a new event. The resource is the model named by the alert's
    ``model_name`` label (else ``default_model``)."""
    model = alert.labels.get("model_name", default_model)
    name = alert.labels.get("alertname", "")
    started = alert.starts_at.isoformat()
    refusal = retrain_refusal(alert)
    action = "notify" if refusal else alert.labels.get(ACTION_LABEL, "notify")
    return {
        "id": events.event_id(events.ALERT_FIRED, alert.fingerprint, started),
        "occurred": started,
        "event": events.ALERT_FIRED,
        "resource": events.model_labels(
            model,
            **{
                events.ALERT_NAME: name,
                events.ALERT_ACTION: action,
                events.ALERT_FINGERPRINT: alert.fingerprint,
            },
        ),
        "payload": {
            "model_name": model,
            "alertname": name,
            "champion_version": alert.labels.get("model_version", ""),
            "window_id": f"alert-{alert.fingerprint}-{started}",
            "starts_at": started,
            "labels": alert.labels,
            "annotations": alert.annotations,
            "values": alert.values,
            "generator_url": alert.generator_url,
            "receiver": receiver,
            "retrain_refused": refusal,
        },
        "related": [],
    }


def webhook_problems(hook: events.LakeFSWebhook, *, relayed: bool) -> list[str]:
    """What makes ``hook`` something lakeFS would never send (empty when it is well formed).
    With ``relayed``, it must also be a relayed event type and name its commit."""
    checks = [
        ("repository_id", hook.repository_id, events.REPOSITORY_ID, "a lakeFS repository id"),
        ("branch_id", hook.branch_id, events.BRANCH_ID, "a lakeFS branch id"),
    ]
    if hook.source_ref:
        checks.append(("source_ref", hook.source_ref, events.REF, "a lakeFS ref"))
    if relayed:
        checks.append(
            ("commit_id", hook.commit_id, events.COMMIT_ID, "a lakeFS commit id (64 hex)")
        )
    problems = [
        f"{field} {_shown(value)} is not {what}"
        for field, value, pattern, what in checks
        if not pattern.fullmatch(value)
    ]
    if relayed and hook.event_type not in RELAYED_EVENT_TYPES:
        problems.insert(
            0,
            f"event_type {_shown(hook.event_type)} is not relayed "
            f"(only {', '.join(RELAYED_EVENT_TYPES)})",
        )
    return problems


def _shown(value: str) -> str:
    """A client's string quoted for an error message: escaped, and cut if long."""
    return repr(value if len(value) <= 80 else f"{value[:80]}...")


class MergeWebhook(events.LakeFSWebhook, kw_only=True):
    """A lakeFS webhook with ids lakeFS could have sent; refused (400, naming the field) at
    decoding otherwise, before the handler runs."""

    def __post_init__(self) -> None:
        _refuse(webhook_problems(self, relayed=False))


class RelayedWebhook(events.LakeFSWebhook, kw_only=True):
    """A lakeFS webhook the gateway relays: also a relayed event type, naming its commit."""

    def __post_init__(self) -> None:
        _refuse(webhook_problems(self, relayed=True))


def _refuse(problems: list[str]) -> None:
    # msgspec turns a ValueError here into a validation error, which Litestar answers with 400.
    if problems:
        logger.warning("refusing a lakeFS webhook: %s", "; ".join(problems))
        raise ValueError(f"not a lakeFS webhook lakeloop accepts: {'; '.join(problems)}")


def body_too_large(
    _: Request[Any, Any, Any], __: RequestEntityTooLarge
) -> Response[dict[str, Any]]:
    """413 saying what the limit is."""
    return Response(
        {
            "status_code": HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            "detail": f"request body larger than {MAX_BODY_BYTES} bytes; not read",
        },
        status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    )


class WarmValidator:
    """Builds the Great Expectations validator of the current description once (2-3 s), on a
    thread at start-up, so the first pre-merge hook does not pay for it; callers wait for it if it
    is not ready yet. Tables ingested under an older description get one for it on first use."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()

    def get(self, spec: DatasetSpec | None = None) -> Validator:
        with self._lock:
            return warm_validator(spec or self.spec)


def warm_up(validator: WarmValidator, gate: DataGate, client: Any, settings: Settings) -> None:
    """On a thread: build the validator, then judge the production branch once, so the first
    pre-merge hook finds every table's check kept. After an upgrade or a description change the
    history is read here, not inside the hook's timeout (50 s)."""

    def run() -> None:
        validator.get()
        try:
            state = gate.judge_merge(
                client,
                repository=settings.lakefs.repository,
                base=settings.lakefs.branch,
                head=settings.lakefs.branch,
            )
        except Exception as error:  # lakeFS not up yet, no repository: the hook checks then
            logger.info("did not judge %s at start-up: %s", settings.lakefs.branch, error)
            return
        logger.info(
            "judged %s at start-up: %d tables checked now, %s",
            settings.lakefs.branch,
            len(state.checked),
            "passes" if state.passed else "fails: " + "; ".join(state.result.failures),
        )

    threading.Thread(target=run, name="warm-gate", daemon=True).start()


def prefect_sender(api_url: str, *, timeout: float = SEND_TIMEOUT_SECONDS) -> Sender:
    """One attempt to POST an event to the Prefect server's ``/events`` endpoint, classified:
    delivered, retry later (unreachable, 5xx, auth or routing problems a fix of configuration
    cures), or rejected (the event itself is malformed)."""
    url = f"{api_url.rstrip('/')}/events"

    def send(event: dict[str, Any]) -> Delivery:
        try:
            response = httpx.post(url, json=[event], timeout=timeout)
        except httpx.HTTPError as error:
            problem = f"{type(error).__name__}: {error}"
        else:
            if response.is_success:
                return Delivery.ACCEPTED
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code in MALFORMED_EVENT_STATUSES:
                logger.error("Prefect at %s refused event %s: %s", url, event["id"], problem)
                return Delivery.REJECTED
        logger.warning("Prefect at %s did not accept event %s: %s", url, event["id"], problem)
        return Delivery.RETRY

    return send


def prefect_event_store(api_url: str, *, timeout: float = SEND_TIMEOUT_SECONDS) -> StoredLookup:
    """Which of some event ids the Prefect server's event store holds: ``POST /events/filter``
    by id, over :data:`ANY_TIME` (events carry their own ``occurred``). Raises when Prefect
    cannot answer. An id that is not a UUID is never stored (Prefect refuses it with 422), so it
    is not asked about: one would make Prefect refuse the whole lookup."""
    url = f"{api_url.rstrip('/')}/events/filter"

    def stored(event_ids: list[str]) -> set[str]:
        asked = {}
        for event_id in event_ids:
            try:
                asked[str(uuid.UUID(event_id))] = event_id
            except ValueError:
                continue
        if not asked:
            return set()
        body = {
            "filter": {"id": {"id": list(asked)}, "occurred": ANY_TIME},
            "limit": len(asked),
        }
        response = httpx.post(url, json=body, timeout=timeout)
        response.raise_for_status()
        found = {str(uuid.UUID(event["id"])) for event in response.json()["events"]}
        return {asked[event_id] for event_id in found if event_id in asked}

    return stored


def create_gateway(
    settings: Settings,
    *,
    spool: Spool | None = None,
    first_retry_seconds: float = 0.5,
    max_retry_seconds: float = 30.0,
    confirm_seconds: float = CONFIRM_EVERY_SECONDS,
) -> Litestar:
    """The gateway app for these settings. Events wait in ``spool`` (default: the one under
    ``<state_dir>/spool``) until Prefect's event store holds them; the redelivery backoff runs
    from ``first_retry_seconds`` up to ``max_retry_seconds``, and the store is asked about sent
    events every ``confirm_seconds``."""
    secret = settings.webhook_secret().encode()
    model_name = settings.mlflow.model_name
    validator = WarmValidator(load_spec(settings.dataset))
    gate = DataGate(
        validator.spec,
        validator.get,
        prefix=settings.lakefs.data_prefix,
        state_dir=settings.state_dir,
        # Kept where the training flow finds it: a merged state is not judged a second time.
        verdicts=verdict_store(settings),
    )
    lakefs = lakefs_client.connect(settings)
    spooled = (spool or Spool(settings.state_dir / "spool")).open()
    redelivery = Redelivery(
        spooled,
        prefect_sender(settings.prefect_api_url),
        prefect_event_store(settings.prefect_api_url),
        first_delay=first_retry_seconds,
        max_delay=max_retry_seconds,
        confirm_every=confirm_seconds,
        confirm_deadline=settings.gateway.confirm_deadline_seconds or CONFIRM_DEADLINE_SECONDS,
    )

    def require_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        """Refuse a request without the shared secret before its body is even read."""
        token = connection.headers.get(TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(token, secret):
            raise NotAuthorizedException(f"missing or wrong {TOKEN_HEADER} header")

    def require_bearer(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        """The same secret as a Bearer token: what Alertmanager's ``http_config.authorization``
        and Grafana's webhook contact point send."""
        scheme, __, given = connection.headers.get("authorization", "").partition(" ")
        # Constant-time: the time taken says nothing about how much of the secret matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), secret):
            raise NotAuthorizedException(
                "missing or wrong `Authorization: Bearer <webhook secret>` header"
            )

    def accept(batch: list[dict[str, Any]]) -> list[bool]:
        """Spool every event (503 if one cannot be stored), then try each once right away;
        returns which Prefect accepted now (the others wait for the redelivery loop)."""
        for event in batch:
            try:
                spooled.put(event)
            except SpoolError as error:
                logger.error("refusing event %s: %s", event["id"], error)
                raise HTTPException(
                    status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=str(error)
                ) from error
        return [redelivery.deliver(event["id"]) for event in batch]

    @post(
        "/webhooks/lakefs",
        operation_id="relayLakeFSWebhook",
        status_code=HTTP_202_ACCEPTED,
        guards=[require_token],
        sync_to_thread=True,
    )
    def relay_lakefs_webhook(data: RelayedWebhook) -> Relayed:
        """Relay a lakeFS webhook to Prefect as an event with a deterministic id."""
        if data.commit_metadata.get(events.SKIP_TRAINING_KEY, "").lower() == "true":
            detail = f"commit metadata has {events.SKIP_TRAINING_KEY}=true"
            return Relayed(
                relayed=False, event=data.event_type, commit_id=data.commit_id, detail=detail
            )
        event = events.lakefs_event(data)
        [delivered] = accept([event])
        outcome = "delivered to Prefect" if delivered else "spooled; Prefect will get it later"
        logger.info(
            "relayed %s on %s/%s commit %s as event %s: %s",
            event["event"],
            data.repository_id,
            data.branch_id,
            data.commit_id,
            event["id"],
            outcome,
        )
        return Relayed(
            relayed=True,
            event=event["event"],
            commit_id=data.commit_id,
            event_id=event["id"],
            detail=outcome,
            delivered=delivered,
        )

    @post(
        "/webhooks/lakefs/validate",
        operation_id="validateLakeFSMerge",
        status_code=HTTP_200_OK,
        guards=[require_token],
        sync_to_thread=True,
    )
    def validate_merge(data: MergeWebhook) -> Response[str]:
        """Check the tables a merge would bring (lakeFS pre-merge hook); non-2xx blocks it.

        The answer is text: where, then one ``- <check>`` line per failed check. lakeFS does
        not pass it on to the merging client (its 412 names only the hook run and the status
        code): it keeps it in the hook run's output, where lakeloop reads it back
        (:func:`lakeloop.lakefs_client.rejection_reason`). lakeFS retries a merge that lost a
        race for the branch, calling this again each time: the verdict is a pure function of the
        two commits, so a repeat answers the same."""
        verdict = check_merge(lakefs, gate, data)
        logger.info(
            "pre-merge %s -> %s/%s: %s",
            data.merge_source or data.source_ref,
            data.repository_id,
            data.branch_id,
            verdict.detail,
        )
        return Response(
            verdict.detail,
            media_type=MediaType.TEXT,
            status_code=HTTP_200_OK if verdict.passed else HTTP_400_BAD_REQUEST,
        )

    @post(
        "/alerts/grafana",
        operation_id="relayGrafanaAlerts",
        status_code=HTTP_202_ACCEPTED,
        guards=[require_bearer],
        sync_to_thread=True,
    )
    def relay_grafana_alerts(body: bytes) -> AlertsRelayed:
        """Relay the firing alerts of a Grafana webhook contact point's notification."""
        return relay_notification(decode_notification(body), accept, default_model=model_name)

    @post(
        "/alerts/alertmanager",
        operation_id="relayAlertmanagerAlerts",
        status_code=HTTP_202_ACCEPTED,
        guards=[require_bearer],
        sync_to_thread=True,
    )
    def relay_alertmanager_alerts(body: bytes) -> AlertsRelayed:
        """Relay the firing alerts of an Alertmanager webhook notification (version 4)."""
        return relay_notification(decode_notification(body), accept, default_model=model_name)

    @get("/healthz", operation_id="gatewayHealth", sync_to_thread=True)
    def healthz() -> GatewayHealth:
        """Liveness of the gateway process, and how many events wait for Prefect to accept them
        or to store them."""
        usage = spooled.usage()
        return GatewayHealth(
            status="ok", pending_events=usage.pending, unconfirmed_events=usage.sent
        )

    def stop_redelivery() -> None:
        """Stop retrying at shutdown; what is pending or sent stays on disk for the next start."""
        redelivery.stop()  # not passed bare: Litestar would hand it the app as the timeout

    return Litestar(
        route_handlers=[
            relay_lakefs_webhook,
            validate_merge,
            relay_grafana_alerts,
            relay_alertmanager_alerts,
            healthz,
            swagger_assets(),
        ],
        # The redelivery thread drains what a previous process left as soon as it starts.
        on_startup=[lambda: warm_up(validator, gate, lakefs, settings), redelivery.start],
        on_shutdown=[stop_redelivery],
        request_max_body_size=MAX_BODY_BYTES,
        exception_handlers={RequestEntityTooLarge: body_too_large},
        # A 500 must leave its traceback in the log (Litestar logs them only in debug mode).
        logging_config=LoggingConfig(log_exceptions="always"),
        openapi_config=OpenAPIConfig(
            title="lakeloop gateway",
            version=lakeloop.__version__,
            description="lakeFS action webhooks and alert notifications in, Prefect events out; "
            "the data checks of a merge before lakeFS makes it.",
            path=SCHEMA_PATH,
            use_handler_docstrings=True,
            # Its scripts and styles served by this app, not a CDN: the page works offline.
            render_plugins=[swagger_page()],
        ),
    )


def relay_notification(
    notification: AlertNotification,
    accept: Callable[[list[dict[str, Any]]], list[bool]],
    *,
    default_model: str,
) -> AlertsRelayed:
    """Hand each firing alert of ``notification`` to ``accept`` as a ``lakeloop.alert.fired``
    event (its ``lakeloop.alert.action`` says ``retrain`` or ``notify``; only a deployment trigger
    decides what runs); resolved alerts are acknowledged and ignored."""
    if notification.truncated_alerts:
        logger.warning(
            "notification %s to %s left out %d alerts (the receiver's max_alerts): "
            "they are not relayed",
            notification.group_key,
            notification.receiver,
            notification.truncated_alerts,
        )
    firing = [alert for alert in notification.alerts if alert.status == "firing"]
    batch = [
        alert_event(alert, default_model=default_model, receiver=notification.receiver)
        for alert in firing
    ]
    # Each event already says whether, and why, its retrain label was refused.
    refused = [
        f"{event['resource'][events.ALERT_FINGERPRINT]}: {event['payload']['retrain_refused']}"
        for event in batch
        if event["payload"]["retrain_refused"] is not None
    ]
    for refusal in refused:
        logger.warning("not a retrain, relayed as notify: alert %s", refusal)
    delivered = accept(batch)
    for event, done in zip(batch, delivered, strict=True):
        logger.info(
            "relayed alert %s (%s) for %s as event %s: %s",
            event["resource"][events.ALERT_NAME],
            event["resource"][events.ALERT_FINGERPRINT],
            event["resource"]["prefect.resource.id"],
            event["id"],
            "delivered to Prefect" if done else "spooled; Prefect will get it later",
        )
    return AlertsRelayed(
        relayed=len(batch),
        ignored=len(notification.alerts) - len(firing),
        event_ids=[event["id"] for event in batch],
        delivered=sum(delivered),
        refused_retrains=refused,
    )


def decode_notification(body: bytes) -> AlertNotification:
    """The notification in ``body`` (Alertmanager's or Grafana's: one shape), or a 422 naming
    what is wrong with it."""
    try:
        return msgspec.json.decode(body, type=AlertNotification)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise HTTPException(
            status_code=HTTP_422_UNPROCESSABLE_ENTITY,
            detail=f"not an Alertmanager or Grafana webhook notification: {error}",
        ) from None


def check_merge(client: Any, gate: DataGate, hook: events.LakeFSWebhook) -> Verdict:
    """The data gate's verdict on the state merging ``hook.source_ref`` into ``hook.branch_id``
    would produce: the tables it brings checked on their own, and the history rules across them
    and everything already on the branch (the same verdict the training flow reaches on the merge
    commit)."""
    state = gate.judge_merge(
        client, repository=hook.repository_id, base=hook.branch_id, head=hook.source_ref
    )
    result = state.result
    if not state.changed and result.success:
        return Verdict(passed=True, tables=[], rows=0, failures=[], detail="no tables changed")
    where = ", ".join(state.changed) or f"{hook.branch_id} after the merge"
    detail = (
        f"data checks passed on {where} ({result.rows} rows in {len(result.tables)} tables "
        "after the merge)"
        if result.success
        else f"data checks failed on {where}:\n" + "\n".join(f"- {f}" for f in result.failures)
    )
    return Verdict(
        passed=result.success,
        tables=state.changed,
        rows=result.rows,
        failures=result.failures,
        detail=detail,
    )
