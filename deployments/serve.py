"""Declares lakeloop's Prefect deployments with their triggers and schedules, and serves them.

``python -m deployments.serve`` is the one long-lived process that runs flows in the embedded
default; on a team server or a cluster the same deployments come from ``prefect.yaml`` with work
pools. :func:`declared` is the one list both follow (a test holds ``prefect.yaml`` to it).

Each flow run is forked from a warm process that has already imported the flows and their
libraries, not started as a new interpreter (:mod:`deployments.warm` says why, with numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import ObjectAlreadyExists, TerminationSignal
from prefect.logging import get_logger
from prefect.runner import Runner

from deployments.warm import forked_flow_runs, wait_until_warm
from flows.monitor import monitor_champion
from flows.reconcile import reconcile_commits
from flows.retrain import retrain_on_drift
from flows.train import train_on_commit
from lakeloop.events import (
    ALERT_ACTION,
    ALERT_FIRED,
    BRANCH,
    DRIFT_DETECTED,
    RETRAIN_PARAMETERS,
    from_payload,
    model_resource,
    repository_resource,
)
from lakeloop.loop import poll
from lakeloop.settings import Settings, load_settings
from pipelines.runtime import promotion_lock

logger = get_logger("lakeloop.flows")  # Prefect's handlers write it to the flow server's log

TAGS = ["lakeloop"]

PREFECT_START_SECONDS = 300.0
"""How long the flow server waits for the Prefect server it starts beside; past it, it exits
and supervisord starts it again."""

# lakeFS event types that mean "the production branch has new data".
TRAINING_EVENTS = ("lakefs.post-commit", "lakefs.post-merge")


def training_trigger(settings: Settings) -> DeploymentEventTrigger:
    """Run training for every commit or merge on the production branch of the repository."""
    return DeploymentEventTrigger(
        name="train-on-lakefs-commit",
        description="A commit or merge on the production branch trains a model on that commit.",
        expect=set(TRAINING_EVENTS),
        match={
            "prefect.resource.id": repository_resource(settings.lakefs.repository),
            BRANCH: settings.lakefs.branch,
        },
        parameters={
            "repository": "{{ event.payload.repository_id }}",
            "commit_id": "{{ event.payload.commit_id }}",
            "reason": "{{ event.event }}",
        },
    )


def retrain_trigger(settings: Settings) -> DeploymentEventTrigger:
    """Retrain when the monitor reports drift on the served model."""
    return DeploymentEventTrigger(
        name="retrain-on-drift",
        description="A drift event from the monitor retrains on the newest production commit.",
        expect={DRIFT_DETECTED},
        match={"prefect.resource.id": model_resource(settings.mlflow.model_name)},
        parameters=from_payload(*RETRAIN_PARAMETERS),
    )


def alert_trigger(settings: Settings) -> DeploymentEventTrigger:
    """Retrain when a Grafana alert labelled ``lakeloop_action=retrain`` fires for the model (the
    gateway relays it as ``lakeloop.alert.fired``; see docs/observability.md)."""
    return DeploymentEventTrigger(
        name="retrain-on-alert",
        description="A Grafana alert labelled lakeloop_action=retrain retrains the model.",
        expect={ALERT_FIRED},
        match={
            "prefect.resource.id": model_resource(settings.mlflow.model_name),
            ALERT_ACTION: "retrain",
        },
        parameters=from_payload(*RETRAIN_PARAMETERS[:2]),
    )


@dataclass(frozen=True)
class Declared:
    """One deployment as lakeloop declares it, before it is bound to serve() or a work pool."""

    name: str
    flow: Any
    entrypoint: str
    description: str
    triggers: list[DeploymentEventTrigger] = field(default_factory=list)
    interval: timedelta | None = None


def declared(settings: Settings) -> list[Declared]:
    """Every lakeloop deployment."""
    _, train_name = settings.prefect.train_deployment.split("/")
    return [
        Declared(
            name=train_name,
            flow=train_on_commit,
            entrypoint="flows/train.py:train_on_commit",
            description="Validate, train, register and promote on a lakeFS commit.",
            triggers=[training_trigger(settings)],
        ),
        Declared(
            name="retrain-on-drift",
            flow=retrain_on_drift,
            entrypoint="flows/retrain.py:retrain_on_drift",
            description="Add reported prices to lakeFS and retrain when the monitor finds drift.",
            triggers=[retrain_trigger(settings), alert_trigger(settings)],
        ),
        Declared(
            name="reconcile-commits",
            flow=reconcile_commits,
            entrypoint="flows/reconcile.py:reconcile_commits",
            description="Train production commits whose trigger was lost.",
            interval=timedelta(minutes=30),
        ),
        Declared(
            name="monitor-champion",
            flow=monitor_champion,
            entrypoint="flows/monitor.py:monitor_champion",
            description="Compare the champion's live predictions with its training data.",
            interval=timedelta(minutes=settings.monitoring.interval_minutes),
        ),
    ]


def runner_deployment(deployment: Declared) -> RunnerDeployment:
    """The deployment bound to this process, as ``serve()`` runs it."""
    # `to_deployment` is typed sync-or-async; called from sync code it returns the deployment.
    runner: RunnerDeployment = deployment.flow.to_deployment(
        name=deployment.name,
        description=deployment.description,
        triggers=deployment.triggers,
        interval=deployment.interval,
        tags=TAGS,
    )
    return runner


def serve_forked(
    deployments: list[Declared],
    *,
    limit: int | None,
    prepare: Callable[[], None] = lambda: None,
) -> None:
    """Register the deployments and run their flow runs until stopped, at most ``limit`` at once,
    each in its own process forked from the warm one (:mod:`deployments.warm`). What Prefect's
    ``serve()`` does, with the flows added by ``Runner.add_flow``: ``serve()`` adds deployments
    only, whose runs start as ``python -m prefect.engine`` and import the flow again.

    ``prepare`` runs while the warm parent imports; the deployments are registered (what
    ``lakeloop up`` waits for) only once it has, so the first run is as warm as the next."""
    with forked_flow_runs():
        prepare()
        wait_until_warm()
        runner = Runner(limit=limit)
        for deployment in deployments:
            runner.add_flow(
                deployment.flow,
                name=deployment.name,
                description=deployment.description,
                triggers=[*deployment.triggers],
                interval=deployment.interval,
                tags=TAGS,
            )
        logger.info(
            "serving %s; each flow run forked from a warm process",
            ", ".join(d.name for d in deployments),
        )
        try:
            asyncio.run(runner.start())
        except (KeyboardInterrupt, TerminationSignal) as stop:
            logger.info("%s: stopping the flow server", type(stop).__name__)


def ensure_promotion_lock(settings: Settings) -> None:
    """Create the one-slot limit that serialises promotions (idempotent). On a team server the
    same is `prefect gcl create lakeloop-promote-<model> --limit 1`."""
    limit = GlobalConcurrencyLimitCreate(name=promotion_lock(settings), limit=1)
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(limit)


def wait_for_prefect(settings: Settings, *, timeout: float = PREFECT_START_SECONDS) -> None:
    """Wait until the Prefect server answers its health check: ``lakeloop up`` starts the flow
    server together with it, so that the warm parent imports while Prefect starts."""
    poll(
        lambda: httpx.get(f"{settings.prefect_api_url}/health", timeout=5.0).is_success,
        what=f"the Prefect server at {settings.prefect_api_url}",
        timeout=timeout,
    )


def main() -> None:
    settings = load_settings()

    def prepare() -> None:
        wait_for_prefect(settings)
        ensure_promotion_lock(settings)

    # One flow run at a time: a laptop trains one model at once, and a monitor run waits for a
    # training to finish instead of competing with it for the two cores.
    serve_forked(declared(settings), limit=1, prepare=prepare)


if __name__ == "__main__":
    main()
