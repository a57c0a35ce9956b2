"""MLflow: runs with full lineage, the registry, and the champion alias."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

import lakeloop
from lakeloop.model import TrainedModel
from lakeloop.settings import Settings

# Tag names that carry lineage; the API and the flows read them back.
TAG_REPOSITORY = "lakefs.repository"
TAG_COMMIT = "lakefs.commit_id"
TAG_VALIDATION = "validation.outcome"
TAG_CODE_VERSION = "lakeloop.code_version"
TAG_DATASET = "dataset"
TAG_GATE = "gate.decision"
TAG_GATE_REASONS = "gate.reasons"
TAG_PREVIOUS = "previous_champion"
CHALLENGER_ALIAS = "challenger"

# MLflow stores sklearn models with skops, which loads only types named as trusted: ours and
# XGBoost's, nothing arbitrary (unlike pickle).
TRUSTED_MODEL_TYPES = [
    "lakeloop.model.FeatureEncoder",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBRegressor",
]


def connect(settings: Settings) -> MlflowClient:
    """A client for the configured tracking server; also points the fluent API at it."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def code_version() -> str:
    """Package version plus the git commit of the checkout, when there is one."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],  # noqa: S607 - git from PATH is the point
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            cwd=Path(lakeloop.__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return lakeloop.__version__
    return f"{lakeloop.__version__}+g{sha}"


def run_for_commit(client: MlflowClient, settings: Settings, *, commit_id: str) -> Any | None:
    """The finished training run for this lakeFS commit, if one exists (flows are idempotent)."""
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_COMMIT}` = '{commit_id}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None


@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    version: str


@dataclass(frozen=True)
class ChampionScore:
    """The current champion scored on a challenger's holdout."""

    version: str
    metrics: dict[str, float]


def log_trained(
    settings: Settings,
    trained: TrainedModel,
    *,
    repository: str,
    commit_id: str,
    dataset: str,
    validation: str,
) -> LoggedModel:
    """Log one training run (parameters, metrics, lineage, the model) and register the model."""
    mlflow.set_experiment(settings.mlflow.experiment)
    with mlflow.start_run(run_name=f"train-{commit_id:.8}") as run:
        mlflow.set_tags(
            {
                TAG_REPOSITORY: repository,
                TAG_COMMIT: commit_id,
                TAG_VALIDATION: validation,
                TAG_CODE_VERSION: code_version(),
                TAG_DATASET: dataset,
            }
        )
        mlflow.log_params(
            {
                **settings.training.model_dump(),
                "train_rows": trained.train_rows,
                "holdout_rows": trained.holdout_rows,
            }
        )
        mlflow.log_metrics(trained.metrics)
        example = trained.input_example
        info = mlflow.sklearn.log_model(
            trained.pipeline,
            name="model",
            signature=infer_signature(example, trained.pipeline.predict(example)),
            input_example=example,
            registered_model_name=settings.mlflow.model_name,
            skops_trusted_types=TRUSTED_MODEL_TYPES,
        )
    return LoggedModel(run_id=run.info.run_id, version=str(info.registered_model_version))


def champion(client: MlflowClient, settings: Settings) -> ModelVersion | None:
    """The model version the champion alias points at, or ``None`` before the first promotion."""
    try:
        return client.get_model_version_by_alias(
            settings.mlflow.model_name, settings.mlflow.champion_alias
        )
    except MlflowException as error:
        if error.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        raise


def load_version(settings: Settings, *, version: str) -> Any:
    """The fitted pipeline of a registered version (skops, with only our trusted types)."""
    uri = f"models:/{settings.mlflow.model_name}/{version}"
    return mlflow.sklearn.load_model(uri)


def record_decision(
    client: MlflowClient,
    settings: Settings,
    *,
    logged: LoggedModel,
    reasons: list[str],
    champion: ChampionScore | None,
) -> None:
    """Write the gate's decision on the version (and the champion's scores on the run), then
    promote: one alias move. A rejected version stays registered as ``challenger`` with its reason;
    a promoted one records the champion it replaced, for rollback."""
    name = settings.mlflow.model_name
    if champion is not None:
        for metric, value in champion.metrics.items():
            client.log_metric(logged.run_id, f"champion_{metric}", value)
    client.set_model_version_tag(
        name, logged.version, TAG_GATE, "rejected" if reasons else "promoted"
    )
    client.set_model_version_tag(name, logged.version, TAG_GATE_REASONS, "; ".join(reasons) or "-")
    if reasons:
        client.set_registered_model_alias(name, CHALLENGER_ALIAS, logged.version)
        return
    if champion is not None:
        client.set_model_version_tag(name, logged.version, TAG_PREVIOUS, champion.version)
    client.set_registered_model_alias(name, settings.mlflow.champion_alias, logged.version)
