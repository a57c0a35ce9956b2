"""Declares lakeloop's Prefect deployments with their event triggers and serves them.

``python -m deployments.serve`` is the one long-lived process that runs flows in the embedded
default; on a cluster the same deployments come from ``prefect.yaml`` with work pools.
"""

from __future__ import annotations

from prefect import serve
from prefect.events import DeploymentEventTrigger

from flows.train import train_on_commit
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


def main() -> None:
    settings = load_settings()
    _, deployment_name = settings.prefect.train_deployment.split("/")
    training = train_on_commit.to_deployment(
        name=deployment_name,
        description="Validate, train, register and promote on a lakeFS commit.",
        triggers=[training_trigger(settings)],
        tags=["lakeloop"],
    )
    serve(training, limit=1)


if __name__ == "__main__":
    main()
