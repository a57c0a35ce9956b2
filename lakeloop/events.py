"""Prefect events: how lakeloop's parts tell each other something happened.

Every event has a deterministic id (uuid5 of its natural key), so a repeated delivery is harmless
to Prefect's de-duplication. Prefect drops events sent while it is down with only a log line, so
senders here check the answer and retry, and report failure to their caller.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

logger = logging.getLogger(__name__)

# Fixed namespace for lakeloop's uuid5 event ids; never change it or ids stop matching.
EVENT_NAMESPACE = uuid.UUID("6f6c1c1e-2a44-5b8e-9a57-6c616b656c6f")
# Commit metadata key: a commit carrying it with "true" is not data (configuration, docs) and
# does not trigger training. lakeloop's own action-install commit sets it.
SKIP_TRAINING_KEY = "lakeloop.skip_training"

# The events lakeloop emits (lakeFS's own arrive as ``lakefs.<event type>``).
DRIFT_DETECTED = "lakeloop.drift.detected"
"""The monitor's policy asks for a retrain (:mod:`monitoring.events` builds it)."""
ALERT_FIRED = "lakeloop.alert.fired"
"""A Grafana alert labelled ``lakeloop_action``, relayed by the gateway."""
ALERT_ACTION = "lakeloop.alert.action"
"""Resource label of an alert event: what the alert asks for (``retrain`` triggers one)."""
ALERT_NAME = "lakeloop.alert"
"""Resource label of an alert event: the alert rule's name."""
ALERT_FINGERPRINT = "lakeloop.alert.fingerprint"
"""Resource label of an alert event: the alert's fingerprint (one alert, across its firings)."""


def retrain_finished(status: str) -> str:
    """The event a retrain emits when it ends: ``lakeloop.retrain.<status>``."""
    return f"lakeloop.retrain.{status}"


def model_resource(model_name: str) -> str:
    """The Prefect resource id of a registered model: what the model's events are about and what
    its deployments' triggers match."""
    return f"lakeloop.model.{model_name}"


MODEL_VERSION = "lakeloop.model_version"
"""Resource label of a model's events: the version they are about."""
WINDOW = "lakeloop.window"
"""Resource label of a drift event, and metadata key of the commit its retrain folds prices in
with: the monitored window's id."""


def model_labels(model_name: str, **labels: str) -> dict[str, str]:
    """The resource of an event about a registered model, with more labels (by their keys)."""
    return {
        "prefect.resource.id": model_resource(model_name),
        "prefect.resource.name": model_name,
        **labels,
    }


RETRAIN_PARAMETERS = ("champion_version", "window_id", "window_start", "window_end")
"""Payload keys of a drift event that the retrain flow takes as its parameters (an alert's
payload carries the first two: no window bounds, so no prices are folded for it)."""


def from_payload(*keys: str) -> dict[str, str]:
    """Deployment-trigger parameters read from the triggering event's payload, and its name as
    the run's ``reason``."""
    return {
        **{key: "{{ event.payload." + key + " }}" for key in keys},
        "reason": "{{ event.event }}",
    }


# What lakeFS itself accepts as ids (repository and branch names as lakeFS validates them; commit
# ids are sha256 hex). Anything else is refused, not escaped: these strings become event
# resources, flow parameters and, for the commit, a folder name under the state folder.
REPOSITORY_ID = re.compile(r"[a-z0-9][a-z0-9-]{2,62}")
BRANCH_ID = re.compile(r"[A-Za-z0-9_][-A-Za-z0-9_]{0,255}")
COMMIT_ID = re.compile(r"[0-9a-f]{64}")
# A ref expression (branch, tag or commit, with ~ ^ @ $ modifiers): no control characters, no
# spaces, no `..` (lakeFS refuses those in tag names too).
REF = re.compile(r"(?!.*\.\.)[A-Za-z0-9_][-A-Za-z0-9_./~^@$]{0,255}")


class LakeFSWebhook(msgspec.Struct, kw_only=True):
    """The JSON body lakeFS POSTs to a webhook hook (fields as lakeFS names them, pkg/actions/
    event.go ``EventInfo``). lakeFS omits every field after ``repository_id`` when it is empty
    (``omitempty``: a commit without metadata has no ``commit_metadata``); ``merge_source`` is
    the ref a merge was asked to merge as the client named it, ``source_ref`` its commit."""

    event_type: str
    event_time: str
    action_name: str
    hook_id: str
    repository_id: str
    branch_id: str = ""
    source_ref: str = ""
    commit_id: str = ""
    commit_message: str = ""
    committer: str = ""
    commit_metadata: dict[str, str] = msgspec.field(default_factory=dict)
    merge_source: str = ""


def event_id(*natural_key: str) -> str:
    """The deterministic id of the event with this natural key."""
    return str(uuid.uuid5(EVENT_NAMESPACE, "/".join(natural_key)))


def repository_resource(repository: str) -> str:
    """The Prefect resource id of a lakeFS repository: what its relayed events are about."""
    return f"lakefs.repository.{repository}"


BRANCH = "lakefs.branch"
"""Resource label of a relayed lakeFS event: the branch it happened on."""


def lakefs_event(hook: LakeFSWebhook) -> dict[str, Any]:
    """The Prefect event relaying a lakeFS webhook; it keeps lakeFS's own event type."""
    name = f"lakefs.{hook.event_type}"
    return {
        "id": event_id(name, hook.repository_id, hook.branch_id, hook.commit_id),
        "occurred": hook.event_time or datetime.now(UTC).isoformat(),
        "event": name,
        "resource": {
            "prefect.resource.id": repository_resource(hook.repository_id),
            "prefect.resource.name": hook.repository_id,
            "lakefs.repository": hook.repository_id,
            BRANCH: hook.branch_id,
            "lakefs.commit_id": hook.commit_id,
        },
        "payload": msgspec.to_builtins(hook),
        "related": [],
    }


class DeliveryError(RuntimeError):
    """Prefect did not accept an event after every attempt."""


def emit(
    api_url: str,
    event: dict[str, Any],
    *,
    attempts: int = 5,
    client: httpx.Client | None = None,
) -> None:
    """POST one event to the Prefect server's ``/events`` endpoint; retry with a bounded backoff
    and raise :class:`DeliveryError` if it never answers 2xx."""
    owned = client is None
    http = client or httpx.Client(timeout=10.0)
    try:
        for attempt in range(1, attempts + 1):
            try:
                response = http.post(f"{api_url.rstrip('/')}/events", json=[event])
                if response.is_success:
                    return
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
            logger.warning(
                "event %s (%s) not accepted by Prefect at %s, attempt %d/%d: %s",
                event["event"],
                event["id"],
                api_url,
                attempt,
                attempts,
                problem,
            )
            if attempt < attempts:
                time.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
        raise DeliveryError(f"Prefect at {api_url} did not accept event {event['id']}: {problem}")
    finally:
        if owned:
            http.close()
