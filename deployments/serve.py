"""Declares lakeloop's Prefect deployments with their event triggers and serves them.

``python -m deployments.serve`` is the one long-lived process that runs flows in the embedded
default; on a cluster the same deployments come from ``prefect.yaml`` with work pools.
"""

from __future__ import annotations

import contextlib

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import ObjectAlreadyExists

from flows.train import promotion_lock, train_on_commit
from lakeloop.settings import Settings, load_settings

# lakeFS event types that mean "the production branch has new data".
TRAINING_EVENTS = ("lakefs.post-commit", "lakefs.post-merge")


def training_trigger(settings: Settings) -> DeploymentEventTrigger:
    """Run training for every commit or merge on the production branch of the repository."""
    return DeploymentEventTrigger(
        name="train-on-lakefs-commit",
        description="A commit or merge on the production branch trains a model on that commit.",
        expect=set(TRAINING_EVENTS),
        match={
            "prefect.resource.id": f"lakefs.repository.{settings.lakefs.repository}",
            "lakefs.branch": settings.lakefs.branch,
        },
        parameters={
            "repository": "{{ event.payload.repository_id }}",
            "commit_id": "{{ event.payload.commit_id }}",
            "reason": "{{ event.event }}",
        },
    )


def ensure_promotion_lock(settings: Settings) -> None:
    """Create the one-slot limit that serialises promotions (idempotent). On a team server the
    same is `prefect gcl create lakeloop-promote-<model> --limit 1`."""
    limit = GlobalConcurrencyLimitCreate(name=promotion_lock(settings), limit=1)
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(limit)


def main() -> None:
    settings = load_settings()
    ensure_promotion_lock(settings)
    _, deployment_name = settings.prefect.train_deployment.split("/")
    # `to_deployment` is typed sync-or-async; called from sync code it returns the deployment.
    training: RunnerDeployment = train_on_commit.to_deployment(  # type: ignore[assignment]
        name=deployment_name,
        description="Validate, train, register and promote on a lakeFS commit.",
        triggers=[training_trigger(settings)],
        tags=["lakeloop"],
    )
    serve(training, limit=1)


if __name__ == "__main__":
    main()
