"""MLflow: runs with full lineage, the registry, and the champion alias."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

import lakeloop
from lakeloop import evaluation
from lakeloop.dataset import DatasetSpec
from lakeloop.model import TrainedModel
from lakeloop.settings import Settings

# Tag names that carry lineage; the API and the flows read them back.
TAG_REPOSITORY = "lakefs.repository"
TAG_COMMIT = "lakefs.commit_id"
TAG_VALIDATION = "validation.outcome"
TAG_CODE_VERSION = "lakeloop.code_version"
TAG_DATASET = "dataset"
TAG_TRIGGER = "lakeloop.trigger"
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


def trigger_kind(reason: str) -> str:
    """What started a training run, from the flow's ``reason`` parameter."""
    if reason.startswith("lakefs."):
        return "commit"
    return "drift" if "drift" in reason else "manual"


@dataclass(frozen=True)
class Lineage:
    """Where a model's data came from and why it was trained."""

    repository: str
    commit_id: str
    validation: str
    trigger: str
    """``commit``, ``drift`` or ``manual``."""
    dataset: str
    """Dataset description name and version."""

    def tags(self) -> dict[str, str]:
        return {
            TAG_REPOSITORY: self.repository,
            TAG_COMMIT: self.commit_id,
            TAG_VALIDATION: self.validation,
            TAG_TRIGGER: self.trigger,
            TAG_DATASET: self.dataset,
            TAG_CODE_VERSION: code_version(),
        }

    def data_uri(self, settings: Settings) -> str:
        return f"lakefs://{self.repository}/{self.commit_id}/{settings.lakefs.data_prefix}"


def log_trained(
    settings: Settings,
    trained: TrainedModel,
    *,
    spec: DatasetSpec,
    training_data: pd.DataFrame,
    lineage: Lineage,
    report: Path | None = None,
) -> LoggedModel:
    """Log one training run (parameters, metrics overall and per segment, plots, the training data
    as a dataset input at its lakeFS URI, lineage tags, the model) and register the model with the
    same lineage tags."""
    register_lakefs_source()
    mlflow.set_experiment(settings.mlflow.experiment)
    tags = lineage.tags()
    with mlflow.start_run(run_name=f"train-{lineage.commit_id:.8}") as run:
        mlflow.set_tags(tags)
        mlflow.log_params(
            {
                **settings.training.model_dump(),
                "train_rows": trained.train_rows,
                "holdout_rows": trained.holdout_rows,
            }
        )
        mlflow.log_metrics(trained.metrics | evaluation.segment_metrics(trained, spec))
        for name, figure in evaluation.figures(trained, spec).items():
            mlflow.log_figure(figure, f"evaluation/{name}")
        dataset = from_pandas(
            training_data,
            source=LakeFSDatasetSource(lineage.data_uri(settings)),
            targets=spec.target.name,
            name=f"{lineage.repository}@{lineage.commit_id:.12}",
        )
        mlflow.log_input(dataset, context="training")
        if report is not None:
            mlflow.log_artifacts(str(report), artifact_path="validation")
        example = trained.input_example
        info = mlflow.sklearn.log_model(
            trained.pipeline,
            name="model",
            signature=infer_signature(example, trained.pipeline.predict(example)),
            input_example=example,
            registered_model_name=settings.mlflow.model_name,
            skops_trusted_types=TRUSTED_MODEL_TYPES,
        )
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(settings.mlflow.model_name, version, key, value)
    return LoggedModel(run_id=run.info.run_id, version=version)


def log_refused_data(settings: Settings, *, lineage: Lineage, report: Path) -> str:
    """A run (status FAILED, no model) that shows why the data at a commit was refused: the
    lineage tags and the validation report with its Data Docs. Returns the run id."""
    mlflow.set_experiment(settings.mlflow.experiment)
    with mlflow.start_run(run_name=f"refused-{lineage.commit_id:.8}") as run:
        mlflow.set_tags(lineage.tags())
        mlflow.log_artifacts(str(report), artifact_path="validation")
        mlflow.end_run(status="FAILED")
    return str(run.info.run_id)


class LakeFSDatasetSource(DatasetSource):
    """An MLflow dataset source that is a lakeFS URI (``lakefs://repo/commit/prefix``), so a run's
    training data points at the exact commit it was read from."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "lakefs"

    def load(self, **_: Any) -> Any:
        raise NotImplementedError("read it with lakeloop.lakefs_client.read_table at the commit")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and raw_source.startswith("lakefs://")

    @classmethod
    def _resolve(cls, raw_source: Any) -> LakeFSDatasetSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> LakeFSDatasetSource:
        return cls(str(source_dict["uri"]))


def register_lakefs_source() -> None:
    """Teach MLflow the ``lakefs`` dataset source type (at run time, never at import)."""
    # MLflow registers the class itself; its type hint says an instance.
    register_dataset_source(LakeFSDatasetSource)  # type: ignore[arg-type]


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


def restore_champion(
    client: MlflowClient, settings: Settings, *, failed: str, previous: str | None
) -> None:
    """Undo a promotion whose deployment failed: the alias goes back (or away, if there was no
    champion before) and the version says why."""
    name = settings.mlflow.model_name
    if previous is None:
        client.delete_registered_model_alias(name, settings.mlflow.champion_alias)
    else:
        client.set_registered_model_alias(name, settings.mlflow.champion_alias, previous)
    client.set_model_version_tag(name, failed, TAG_GATE, "rolled back: deployment check failed")


def rollback(client: MlflowClient, settings: Settings) -> tuple[str, str]:
    """Point the champion alias back at the champion the current one replaced; returns
    (replaced version, restored version)."""
    name = settings.mlflow.model_name
    current = champion(client, settings)
    if current is None:
        raise LookupError(f"{name} has no champion to roll back")
    previous = (current.tags or {}).get(TAG_PREVIOUS)
    if not previous:
        raise LookupError(f"{name} champion v{current.version} records no previous champion")
    client.set_registered_model_alias(name, settings.mlflow.champion_alias, previous)
    client.set_model_version_tag(name, current.version, TAG_GATE, "rolled back")
    return str(current.version), previous
