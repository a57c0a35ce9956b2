"""A real Prefect server for the integration tests that relay events through the gateway: one
``prefect server start`` on a loopback port and a SQLite database, with lakeloop's triggered
deployments registered (their triggers included) but not served, so a trigger that fires leaves
a flow run that stays Scheduled for a test to count; and what lakeFS and Grafana send, as bodies
and as the events the gateway relays them as."""

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
from litestar import Litestar
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.serve import declared, runner_deployment
from gateway.app import NotifiedAlert, alert_event, create_gateway
from gateway.spool import Spool
from lakeloop.events import LakeFSWebhook, emit, lakefs_event
from lakeloop.loop import FlowRun, flow_runs
from lakeloop.settings import Settings, load_settings
from tests.utils.net import free_port
from tests.utils.prefect_events import EventStream, a_drift_event, event_stream
from tests.utils.waiting import eventually
from tooling.stack import Running, Stack, port_is_free, services

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


@contextmanager
def triggered_prefect(state_dir: Path) -> Iterator[PrefectServer]:
    """A Prefect server with its state in ``state_dir``, the gateway's secret ``SECRET``, and
    lakeloop's triggered deployments registered, once each trigger has fired; stopped after."""
    settings = load_settings(
        state_dir=state_dir,
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
