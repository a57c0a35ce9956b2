"""MLflow: runs with full lineage, the registry, and the champion alias.

A training attempt leaves the registry in one of a few clear states, whatever fails and when:

- Every version is born ``gate.decision=pending`` with its lineage tags (one request creates both),
  inside its run, which ends FINISHED only once the version exists.
- The gate moves an alias first and writes its decision last, so ``pending`` always means "the gate
  has not finished with this version".
- The next attempt on the same commit (a task retry or a new flow run) first abandons what earlier
  ones left: a pending version is released (an alias it holds goes back) and tagged ``abandoned``,
  its run and any run still RUNNING are marked FAILED. A commit counts as trained only when a
  FINISHED run's version was judged, so a half attempt never stops the commit training again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

import lakeloop
from lakeloop import evaluation, evolution, model
from lakeloop.dataset import DatasetSpec, in_units, parse_spec
from lakeloop.model import ClusterHoldout, Holdout, Split, TrainedModel, Trial
from lakeloop.settings import Settings

logger = logging.getLogger(__name__)

# Tag names that carry lineage; the API and the flows read them back.
TAG_REPOSITORY = "lakefs.repository"
TAG_COMMIT = "lakefs.commit_id"
TAG_VALIDATION = "validation.outcome"
TAG_CODE_VERSION = "lakeloop.code_version"
TAG_DATASET = "dataset"
TAG_DATASET_DIGEST = "dataset.digest"
DESCRIPTION_ARTIFACT = "dataset/description.yaml"
"""The dataset description a model was trained under, stored with its run."""
TAG_TRIGGER = "lakeloop.trigger"
TAG_AGAIN = "lakeloop.again"
"""``true`` on a run (and its version) that trains a commit again on purpose
(``lakeloop train COMMIT --again``): a new attempt, judged on its own, not a duplicate."""
TAG_GATE = "gate.decision"
TAG_GATE_REASONS = "gate.reasons"
TAG_PREVIOUS = "previous_champion"
TAG_TRIAL = "tuning.trial"
HYPERPARAMETERS_FROM = "hyperparameters.from"
"""Parameter of a training run: where its hyperparameters came from (``settings``, ``tuning``, or
``champion vN``, which handed on its own tuned ones)."""
TUNING_TRIALS = "tuning.trials"
"""Parameter of a run that searched hyperparameters: how many trials it tried."""
CHALLENGER_ALIAS = "challenger"
# Gate decisions that are not verdicts: the version was never judged, or its attempt failed first.
GATE_PENDING = "pending"
GATE_ABANDONED = "abandoned"
ABANDONED_REASON = "its training attempt failed before the gate decided; the commit was retrained"

# MLflow stores sklearn models with skops, which loads only types named as trusted: ours and
# the model kind's (XGBoost's), nothing arbitrary (unlike pickle).
TRUSTED_MODEL_TYPES = model.stored_types()


# What a logged model needs to load and predict elsewhere (FeatureEncoder is lakeloop's). Stated,
# not inferred: MLflow infers requirements by loading the model in a subprocess, which took most
# of the logging time at 20k rows (4-12 s here), and its guess listed test tools and missed xgboost.
MODEL_PACKAGES = (
    "lakeloop",
    "scikit-learn",
    *model.TRAINER.packages,
    "skops",
    "pandas",
    "numpy",
    "scipy",
)


def model_requirements() -> list[str]:
    """``MODEL_PACKAGES`` pinned to the versions this process trained with (MLflow adds itself)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in MODEL_PACKAGES]


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


class TrackingError(RuntimeError):
    """MLflow failed at a step that leaves the registry changed; the message says which."""


@contextlib.contextmanager
def mlflow_step(settings: Settings, doing: str) -> Iterator[None]:
    """Name the step and the server when an MLflow call in the block fails: the flow run's error
    then says what was left undone, not only which request was refused."""
    try:
        yield
    except MlflowException as error:
        raise TrackingError(
            f"MLflow at {settings.mlflow_tracking_uri} failed while {doing}: {error}"
        ) from error


def versions_of_commit(
    client: MlflowClient, settings: Settings, *, commit_id: str
) -> list[ModelVersion]:
    """Every registered version trained on this lakeFS commit, oldest first."""
    versions = client.search_model_versions(
        f"name = '{settings.mlflow.model_name}' and tags.`{TAG_COMMIT}` = '{commit_id}'"
    )
    return sorted(versions, key=lambda version: int(version.version))


def is_judged(version: ModelVersion) -> bool:
    """Whether the gate finished with this version (promoted, rejected, or since rolled back)."""
    return (version.tags or {}).get(TAG_GATE) not in {None, GATE_PENDING, GATE_ABANDONED}


def run_for_commit(
    client: MlflowClient, settings: Settings, *, commit_id: str, tuned: bool = False
) -> Run | None:
    """The run that trained this lakeFS commit to the end (flows are idempotent on the commit):
    FINISHED, with a registered version the gate judged; with ``tuned``, only a run that searched
    hyperparameters counts (asking to tune a commit trained without it trains it again). A failed
    run, or one whose version was left pending or abandoned by a failed attempt, does not count,
    so the commit trains again. Of several (``--again``), the newest."""
    for version in reversed(versions_of_commit(client, settings, commit_id=commit_id)):
        if is_judged(version) and version.run_id:
            run = client.get_run(version.run_id)
            if run.info.status == "FINISHED" and (not tuned or TUNING_TRIALS in run.data.params):
                return run
    return None


def version_of_run(client: MlflowClient, settings: Settings, *, run_id: str) -> ModelVersion:
    """The version a training run registered."""
    [version] = client.search_model_versions(
        f"name='{settings.mlflow.model_name}' and run_id='{run_id}'"
    )
    return version


def runs_of_commit(
    client: MlflowClient,
    settings: Settings,
    *,
    commit_id: str,
    refused: bool = False,
    running: bool = False,
    started_after: datetime | None = None,
    limit: int | None = None,
) -> list[Run] | None:
    """Runs of the training experiment on this lakeFS commit: with ``refused``, those whose data
    failed the checks; with ``running``, those still RUNNING (that started after
    ``started_after``); at most ``limit``. ``None`` when there is no experiment yet."""
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    if experiment is None:
        return None
    query = f"tags.`{TAG_COMMIT}` = '{commit_id}'"
    if refused:
        query += f" and tags.`{TAG_VALIDATION}` LIKE 'failed%'"
    if running:
        query += " and attributes.status = 'RUNNING'"
    if started_after is not None:
        query += f" and attributes.start_time > {int(started_after.timestamp() * 1000)}"
    found = client.search_runs(
        [experiment.experiment_id], filter_string=query, max_results=limit or 1000
    )
    return list(found)


def abandon_incomplete(client: MlflowClient, settings: Settings, *, commit_id: str) -> list[str]:
    """Close what earlier, failed attempts on this commit left open; returns what was done.

    A pending version gives back any alias it holds (the champion alias returns to the version it
    replaced, or goes) and is tagged ``abandoned`` with the reason; its run, and any run of the
    commit still RUNNING (MLflow was unreachable when it should have been ended), become FAILED.
    Two attempts on one commit at once are not expected (trigger events have deterministic ids);
    if it happens, the one whose version is abandoned here refuses to promote it
    (``record_decision``).
    """
    name = settings.mlflow.model_name
    done = []
    for found in versions_of_commit(client, settings, commit_id=commit_id):
        if (found.tags or {}).get(TAG_GATE) != GATE_PENDING:
            continue
        version = client.get_model_version(name, found.version)  # search leaves aliases out
        for alias in version.aliases or []:
            if alias == settings.mlflow.champion_alias:
                previous = (version.tags or {}).get(TAG_PREVIOUS)
                _point_champion(client, settings, version=previous)
            else:
                client.delete_registered_model_alias(name, alias)
        client.set_model_version_tag(name, version.version, TAG_GATE_REASONS, ABANDONED_REASON)
        client.set_model_version_tag(name, version.version, TAG_GATE, GATE_ABANDONED)
        done.append(f"version {version.version} abandoned")
        if version.run_id:
            client.set_terminated(version.run_id, "FAILED")
            done.append(f"run {version.run_id} marked failed")
    for run in runs_of_commit(client, settings, commit_id=commit_id, running=True) or []:
        client.set_terminated(run.info.run_id, "FAILED")
        done.append(f"run {run.info.run_id} marked failed")
    return done


@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    version: str


@dataclass(frozen=True)
class ChampionScore:
    """The current champion scored on a challenger's holdout."""

    version: str
    metrics: dict[str, float]
    note: str = ""
    """How the score was taken when the champion was trained under another description."""
    clean_metrics: dict[str, float] | None = None
    """Its metrics on the challenger's clean holdout (the rows that predate the folded feedback,
    ``TrainedModel.clean_holdout``); ``None`` when the challenger has none."""
    reused: bool = field(default=False, compare=False)
    """Kept from an earlier scoring of the same version on the same rows (:func:`score_version`):
    the model was not loaded again."""


TRIGGER_KINDS = ("commit", "drift", "alert", "reconcile", "manual")


def trigger_kind(reason: str) -> str:
    """What started a training run (one of :data:`TRIGGER_KINDS`), from the flow's ``reason``:
    a lakeFS event, a drift event, a Grafana alert, the reconcile flow, or a person."""
    if reason.startswith("lakefs."):
        return "commit"
    if "drift" in reason:
        return "drift"
    if reason.startswith("lakeloop.alert."):
        return "alert"
    return "reconcile" if reason == "reconcile" else "manual"


@dataclass(frozen=True)
class Lineage:
    """Where a model's data came from and why it was trained."""

    repository: str
    commit_id: str
    validation: str
    trigger: str
    """One of :data:`TRIGGER_KINDS`."""
    dataset: str
    """Dataset description name and version (``name@vN``)."""
    dataset_digest: str = ""
    """Digest of the description's content (two edits of one version differ)."""
    again: bool = False
    """A deliberate new attempt on a commit that already trained (``TAG_AGAIN``)."""

    def tags(self) -> dict[str, str]:
        again = {TAG_AGAIN: "true"} if self.again else {}
        return again | {
            TAG_REPOSITORY: self.repository,
            TAG_COMMIT: self.commit_id,
            TAG_VALIDATION: self.validation,
            TAG_TRIGGER: self.trigger,
            TAG_DATASET: self.dataset,
            TAG_DATASET_DIGEST: self.dataset_digest,
            TAG_CODE_VERSION: code_version(),
        }

    def data_uri(self, settings: Settings) -> str:
        return f"lakefs://{self.repository}/{self.commit_id}/{settings.lakefs.data_prefix}"


def use_experiment(settings: Settings) -> None:
    """Make the configured experiment the active one, creating it if needed.

    ``mlflow.set_experiment`` alone is not enough when two processes create the experiment at
    the same moment (the first trainings on a new server): the one whose create is refused
    returns the experiment without making it active (MLflow 3.17), and its run lands in
    ``Default``. Setting it again by id makes it active in every case."""
    experiment = mlflow.set_experiment(settings.mlflow.experiment)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)


def log_trained(
    settings: Settings,
    trained: TrainedModel,
    *,
    spec: DatasetSpec,
    training_data: pd.DataFrame | None,
    lineage: Lineage,
) -> LoggedModel:
    """Log one training run (parameters, metrics overall and per segment, the training data as a
    dataset input at its lakeFS URI, lineage tags, tuning trials as nested runs, the model) and
    register the model as a pending version with the same lineage tags. Its plots and the data
    checks' report decide nothing: :func:`log_reports` adds them once the gate has decided.

    The run ends FINISHED only after the version exists; if anything fails first it ends FAILED,
    or, when MLflow cannot be told, stays RUNNING for the next attempt to mark failed."""
    register_lakefs_source()
    use_experiment(settings)
    tags = lineage.tags()
    with _run_or_fail(f"train-{lineage.commit_id:.8}", tags=tags) as run:
        mlflow.log_params(
            {
                **settings.training.model_dump(),
                **trained.params,  # what was fitted: the settings', or the best trial's
                "train_rows": trained.train_rows,
                "holdout_rows": trained.holdout_rows,
                **(
                    {
                        f"{evaluation.CLEAN_HOLDOUT}_rows": len(trained.clean_holdout),
                        "set_aside_rows": trained.set_aside_rows,
                    }
                    if trained.clean_holdout is not None
                    else {}
                ),
                **_tuning_params(trained.trials, chosen=trained.params),
                HYPERPARAMETERS_FROM: trained.hyperparameters_from,
            }
        )
        if trained.trials:
            log_trials(trained.trials, tags=tags)
        mlflow.log_input(
            _training_dataset(settings, trained, spec, training_data, lineage), context="training"
        )
        mlflow.log_text(spec.to_yaml(), DESCRIPTION_ARTIFACT)
        example = trained.input_example
        info = mlflow.sklearn.log_model(
            trained.pipeline,
            name="model",
            signature=infer_signature(example, trained.pipeline.predict(example)),
            input_example=example,
            pip_requirements=model_requirements(),
            skops_trusted_types=TRUSTED_MODEL_TYPES,
        )
        # Logged after the model and linked to it in one request: logged before, `log_model`
        # would link them itself, reading each metric's history back one request at a time
        # (282 requests for a table with many categories, 8 s of a training).
        mlflow.log_metrics(
            trained.metrics
            | evaluation.clean_holdout_metrics(trained)
            | evaluation.segment_metrics(trained, spec),
            model_id=info.model_id,
        )
        version = register(settings, model_uri=info.model_uri, run_id=run.info.run_id, tags=tags)
    return LoggedModel(run_id=run.info.run_id, version=version)


def _training_dataset(
    settings: Settings,
    trained: TrainedModel,
    spec: DatasetSpec,
    training_data: pd.DataFrame | None,
    lineage: Lineage,
) -> Dataset:
    """The training data as an MLflow dataset at its lakeFS URI: profiled from the frame when
    this process holds it; described by its schema and the commit alone when a Dask cluster
    read it (``None``), so nothing here reads the rows."""
    source = LakeFSDatasetSource(lineage.data_uri(settings))
    name = f"{lineage.repository}@{lineage.commit_id:.12}"
    if training_data is not None:
        return from_pandas(training_data, source=source, targets=spec.target.name, name=name)
    columns = (
        trained.holdout.columns
        if isinstance(trained.holdout, ClusterHoldout)
        else (trained.holdout.iloc[:0])
    )
    schema = from_pandas(columns, source=source, targets=spec.target.name, name=name).schema
    # MLflow's stubs mark ``profile`` abstract; MetaDataset defines it (None: no rows to profile).
    return MetaDataset(source, name=name, digest=lineage.commit_id[:8], schema=schema)  # type: ignore[abstract]


def log_reports(
    settings: Settings,
    trained: TrainedModel,
    spec: DatasetSpec,
    *,
    run_id: str,
    report: Path | None = None,
) -> None:
    """Add to a training run (ended or not) what a reviewer reads and nothing decides: the
    evaluation plots and, when given, the data checks' report folder (JSON, markdown, Data Docs).
    Written again whole by a retry."""
    client = connect(settings)
    for name, figure in evaluation.figures(trained, spec).items():
        client.log_figure(run_id, figure, f"evaluation/{name}")
    if report is not None:
        client.log_artifacts(run_id, str(report), artifact_path="validation")


@contextlib.contextmanager
def _run_or_fail(name: str, *, tags: dict[str, str]) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that ends FINISHED when the block succeeds and FAILED when it raises.

    Unlike ``with mlflow.start_run()``, a failure to end the run (MLflow is often what failed)
    does not hide the block's own error: the run then stays RUNNING, and the next attempt on the
    commit marks it failed (``abandon_incomplete``)."""
    run = mlflow.start_run(run_name=name, tags=tags)
    try:
        yield run
    except BaseException:
        with contextlib.suppress(MlflowException):
            mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()


def register(settings: Settings, *, model_uri: str, run_id: str, tags: dict[str, str]) -> str:
    """Register a logged model as a new version of the configured model; returns its number.

    The version's lineage tags and ``gate.decision=pending`` travel in the request that creates
    it, so no version ever exists without them."""
    with mlflow_step(settings, f"registering the model of run {run_id}"):
        version = mlflow.register_model(
            model_uri, settings.mlflow.model_name, tags={**tags, TAG_GATE: GATE_PENDING}
        )
    return str(version.version)


def _tuning_params(trials: Sequence[Trial], *, chosen: dict[str, object]) -> dict[str, object]:
    """The parent run's record of a tuning: how many trials, and which one was kept."""
    if not trials:
        return {}
    best = next(trial.number for trial in trials if trial.params == chosen)
    return {TUNING_TRIALS: len(trials), "tuning.best_trial": best}


def log_trials(trials: Sequence[Trial], *, tags: dict[str, str]) -> list[str]:
    """One nested run per tuning trial under the active run: its hyperparameters, its scores on
    the early-stopping slice that chose among them (never the holdout), and the run's lineage.
    Returns the nested runs' ids."""
    run_ids = []
    for trial in trials:
        with mlflow.start_run(
            run_name=f"trial-{trial.number:02d}",
            nested=True,
            tags={**tags, TAG_TRIAL: str(trial.number)},
        ) as child:
            mlflow.log_params(trial.params)
            mlflow.log_metrics(
                {f"early_stopping.{name}": value for name, value in trial.metrics.items()}
                | {"rounds": float(trial.rounds)}
            )
        run_ids.append(child.info.run_id)
    return run_ids


def log_refused_data(settings: Settings, *, lineage: Lineage, report: Path) -> str:
    """A run (status FAILED, no model) that shows why the data at a commit was refused: the
    lineage tags and the validation report with its Data Docs. Returns the run id."""
    use_experiment(settings)
    with mlflow.start_run(run_name=f"refused-{lineage.commit_id:.8}") as run:
        mlflow.set_tags(lineage.tags())
        mlflow.log_artifacts(str(report), artifact_path="validation")
        mlflow.end_run(status="FAILED")
    return str(run.info.run_id)


TAG_BLOCKED = "lakeloop.training_blocked"
"""Registered-model tag present while the data on the production branch fails the training gate:
JSON saying since which commit, why, which tables, and how far the champion lags behind."""


@dataclass(frozen=True)
class Blocked:
    """Training is stopped: the newest commit's data fails the checks, so the champion is stale."""

    commit_id: str
    """The newest commit refused."""
    since: str
    """When training was first refused (ISO 8601, UTC); kept while later commits are refused."""
    tables: list[str]
    """Stored tables that break a rule (what a repair would remove)."""
    reason: str
    """The failed checks, one per line."""
    commits_behind: int | None = None
    """Commits on the production branch newer than the champion's (None: no champion, or its
    commit is out of reach)."""

    @property
    def summary(self) -> str:
        behind = "" if self.commits_behind is None else f"{self.commits_behind} commits behind; "
        tables = ", ".join(self.tables) or "the data"
        return (
            f"training blocked since {self.since} ({behind}newest refused commit "
            f"{self.commit_id:.12}): {tables} fail the data checks; repair with "
            "`lakeloop data remove <path>`"
        )


def record_blocked(client: MlflowClient, settings: Settings, blocked: Blocked) -> None:
    """Say on the registered model that training is blocked (creating the model if no version was
    ever registered); an earlier record keeps its ``since``."""
    name = settings.mlflow.model_name
    earlier = training_blocked(client, settings)
    if earlier is not None:
        blocked = replace(blocked, since=earlier.since)
    with mlflow_step(settings, f"recording that training of {name} is blocked"):
        try:
            client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_registered_model(name)
        client.set_registered_model_tag(name, TAG_BLOCKED, json.dumps(asdict(blocked)))


def clear_blocked(client: MlflowClient, settings: Settings) -> bool:
    """Training passed the data checks again; True when a block was lifted."""
    if training_blocked(client, settings) is None:
        return False
    client.delete_registered_model_tag(settings.mlflow.model_name, TAG_BLOCKED)
    return True


def training_blocked(client: MlflowClient, settings: Settings) -> Blocked | None:
    """The block recorded on the registered model, if training is blocked."""
    try:
        model = client.get_registered_model(settings.mlflow.model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    stored = (model.tags or {}).get(TAG_BLOCKED)
    if not stored:
        return None
    try:
        return Blocked(**json.loads(stored))
    except (TypeError, ValueError):
        return Blocked(commit_id="", since="", tables=[], reason=stored)


@dataclass(frozen=True)
class Refused:
    """The newest registered version, refused by the gate: why nothing new is served."""

    version: str
    commit_id: str
    reasons: str

    @property
    def summary(self) -> str:
        return (
            f"version {self.version} (lakeFS commit {self.commit_id:.12}) was trained and refused "
            f"by the gate: {self.reasons}; see `lakeloop model show {self.version}`"
        )


def newest_refusal(client: MlflowClient, settings: Settings) -> Refused | None:
    """The newest registered version when the gate refused it; ``None`` otherwise."""
    newest = version_rows(client, settings, limit=1)
    if not newest or newest[0].decision != "rejected":
        return None
    return Refused(
        version=newest[0].version, commit_id=newest[0].commit_id, reasons=newest[0].reasons
    )


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


@dataclass(frozen=True)
class VersionRecord:
    """A registered version with what its training run recorded: the one way the API, the
    monitor and ``lakeloop model show`` read a version's lineage."""

    version: ModelVersion
    tags: dict[str, str]
    """The run's tags, overlaid with the version's (the gate's decision lives on the version)."""
    metrics: dict[str, float]
    """The run's holdout metrics."""

    @property
    def number(self) -> str:
        return str(self.version.version)

    @property
    def run_id(self) -> str:
        return str(self.version.run_id or "")

    @property
    def repository(self) -> str:
        return self.tags.get(TAG_REPOSITORY, "")

    @property
    def commit_id(self) -> str:
        return self.tags.get(TAG_COMMIT, "")


def version_record(
    client: MlflowClient, settings: Settings, version: str | None = None
) -> VersionRecord | None:
    """``version`` (the champion when ``None``) with its run's tags and metrics; ``None`` when
    there is no champion yet. Raises ``LookupError`` for a version without a run."""
    found = (
        client.get_model_version(settings.mlflow.model_name, version)
        if version
        else champion(client, settings)
    )
    if found is None:
        return None
    return record_of(client, found)


def record_of(client: MlflowClient, found: ModelVersion) -> VersionRecord:
    """The record of a version already read from the registry (its run read once more).
    Raises ``LookupError`` for a version without a run."""
    if not found.run_id:
        raise LookupError(f"{found.name} version {found.version} has no run")
    run = client.get_run(found.run_id)
    return VersionRecord(
        version=found,
        tags={**run.data.tags, **(found.tags or {})},
        metrics=dict(run.data.metrics),
    )


def log_monitor_run(
    settings: Settings,
    *,
    name: str,
    tags: dict[str, str],
    metrics: dict[str, float],
    artifact: str | None,
    artifact_path: str,
) -> str:
    """Record one monitor run in MLflow, in an experiment of its own so monitor runs never mix
    with training runs; returns the run id."""
    connect(settings)
    mlflow.set_experiment(f"{settings.mlflow.experiment}-monitoring")
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags(tags)
        mlflow.log_metrics(metrics)
        if artifact:
            mlflow.log_artifact(artifact, artifact_path=artifact_path)
    return str(run.info.run_id)


@dataclass(frozen=True)
class VersionRow:
    """One registered version as ``lakeloop model list`` shows it."""

    version: str
    commit_id: str
    trigger: str
    dataset: str
    mae: float | None
    rmse: float | None
    decision: str
    reasons: str
    aliases: tuple[str, ...]
    tuned: bool = False
    """Whether its training searched hyperparameters."""


def version_rows(client: MlflowClient, settings: Settings, *, limit: int = 20) -> list[VersionRow]:
    """The newest ``limit`` registered versions, newest first, with their gate decisions (a
    deliberate new attempt on a commit shows its trigger as ``manual, again``)."""
    try:
        found = client.search_model_versions(
            f"name='{settings.mlflow.model_name}'",
            max_results=limit,
            order_by=["version_number DESC"],
        )
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    # Searches do not fill in aliases; the registered model holds them (alias → version).
    aliases: dict[str, list[str]] = {}
    if found:
        registered = client.get_registered_model(settings.mlflow.model_name)
        for alias, number in (registered.aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
    rows = []
    for version in found:
        tags = version.tags or {}
        run = client.get_run(str(version.run_id)) if version.run_id else None
        metrics = run.data.metrics if run else {}
        run_tags = run.data.tags if run else {}
        tuned = run is not None and TUNING_TRIALS in run.data.params
        rows.append(
            VersionRow(
                version=str(version.version),
                commit_id=tags.get(TAG_COMMIT, ""),
                trigger=run_tags.get(TAG_TRIGGER, "")
                + (", again" if tags.get(TAG_AGAIN) == "true" else ""),
                dataset=tags.get(TAG_DATASET, run_tags.get(TAG_DATASET, "")),
                mae=metrics.get("mae"),
                rmse=metrics.get("rmse"),
                decision=tags.get(TAG_GATE, ""),
                reasons=tags.get(TAG_GATE_REASONS, "") if tags.get(TAG_GATE_REASONS) != "-" else "",
                aliases=tuple(sorted(aliases.get(str(version.version), []))),
                tuned=tuned,
            )
        )
    return rows


def tuning_due(client: MlflowClient, settings: Settings) -> bool:
    """Whether the tuning policy asks the next training to search hyperparameters on its own."""
    policy = settings.training.tune_policy
    if policy == "on_request":
        return False
    if policy == "always":
        return True
    if policy == "when_champion_tuned":
        current = champion(client, settings)
        return (
            current is not None and TUNING_TRIALS in client.get_run(str(current.run_id)).data.params
        )
    newest = version_rows(client, settings, limit=settings.training.tune_every)
    return not any(row.tuned for row in newest)


def handed_on(client: MlflowClient, version: ModelVersion) -> dict[str, Any] | None:
    """The hyperparameters a version hands on to the next training: its own when they were tuned
    (or handed on to it in turn); ``None`` when it used the settings' (so do later trainings)."""
    params = client.get_run(str(version.run_id)).data.params
    if params.get(HYPERPARAMETERS_FROM, "settings") == "settings":
        return None
    return model.TRAINER.typed(params)


def description_of(version: ModelVersion) -> DatasetSpec | None:
    """The dataset description a version was trained under (None when its run did not store
    one: versions trained before descriptions were recorded)."""
    try:
        text = mlflow.artifacts.load_text(f"runs:/{version.run_id}/{DESCRIPTION_ARTIFACT}")
    except (MlflowException, OSError):
        return None
    return parse_spec(text, source=f"run {version.run_id}")


def load_version(settings: Settings, *, version: str) -> Any:
    """The fitted pipeline of a registered version (skops, with only our trusted types)."""
    uri = f"models:/{settings.mlflow.model_name}/{version}"
    return mlflow.sklearn.load_model(uri)


SCORES = "registry/scores"
"""Where, in the settings' store, versions' scores are kept by (version, holdout content)."""
SCORE_FORMAT = 1
"""Part of every score's key: a change to how a score is taken bumps it."""


def frame_digest(frame: Holdout | None) -> str:
    """The content identity of a table of rows: its columns, their types and every value (not
    its index), or ``none``; a holdout a Dask cluster keeps was digested there."""
    if frame is None:
        return "none"
    if isinstance(frame, ClusterHoldout):
        return frame.digest
    identity = hashlib.sha256(
        json.dumps([list(map(str, frame.columns)), list(map(str, frame.dtypes))]).encode()
    )
    identity.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return identity.hexdigest()


def score_key(
    settings: Settings,
    version: ModelVersion,
    holdout: Holdout,
    spec: DatasetSpec,
    *,
    clean_holdout: Holdout | None = None,
) -> str:
    """What a version's score on a holdout depends on: the version (its number and run, so a
    registry made anew never reuses another's), the description the rows are read under, and the
    content of the holdout and clean holdout."""
    identity = [
        SCORE_FORMAT,
        settings.mlflow.model_name,
        str(version.version),
        str(version.run_id),
        spec.digest,
        frame_digest(holdout),
        frame_digest(clean_holdout),
    ]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def _kept_score(settings: Settings, key: str) -> ChampionScore | None:
    """The score kept under ``key`` (:func:`score_key`), marked reused; ``None`` when none is."""
    try:
        stored = json.loads(settings.object_store.child(SCORES).get(f"{key}.json"))
        return replace(ChampionScore(**stored), reused=True)
    except (OSError, ValueError, TypeError):
        return None  # never scored (or unreadable): score it


def _keep_score(settings: Settings, key: str, score: ChampionScore) -> None:
    """Keep a fresh score under ``key`` for the next training on the same holdout."""
    stored = asdict(score) | {"reused": False}
    try:
        settings.object_store.child(SCORES).put(f"{key}.json", json.dumps(stored).encode())
    except OSError as error:  # only saves work later: the score itself stands
        logger.warning("could not keep v%s's score: %s", score.version, error)


def score_version(
    settings: Settings,
    version: ModelVersion,
    holdout: Holdout,
    spec: DatasetSpec,
    *,
    clean_holdout: Holdout | None = None,
) -> ChampionScore:
    """A registered version's metrics on a holdout under the current description ``spec`` (and
    on ``clean_holdout``, the rows that predate folded feedback, when given). A version trained
    under another description is scored on the rows as its requests reach it under this one:
    features this description no longer has are missing (the score says so).

    A version's model never changes, so its score on the same rows is kept (in the settings'
    store, :data:`SCORES`) and reused: a second training on the same holdout (a retry, the same
    commit trained again, a retrain on unchanged data) neither loads nor scores it again."""
    key = score_key(settings, version, holdout, spec, clean_holdout=clean_holdout)
    kept = _kept_score(settings, key)
    if kept is not None:
        return kept
    score = _score_now(settings, version, holdout, spec, clean_holdout=clean_holdout)
    _keep_score(settings, key, score)
    return score


def _score_now(
    settings: Settings,
    version: ModelVersion,
    holdout: Holdout,
    spec: DatasetSpec,
    *,
    clean_holdout: Holdout | None,
) -> ChampionScore:
    trained_under = description_of(version) or spec
    loaded = load_version(settings, version=version.version)

    def scored(rows: Holdout) -> tuple[dict[str, float], list[str]]:
        score_rows = functools.partial(_scored, loaded, current=spec, trained=trained_under)
        # A holdout a Dask cluster keeps is scored there: the model goes to its rows.
        return rows.run(score_rows) if isinstance(rows, ClusterHoldout) else score_rows(rows)

    metrics, missing = scored(holdout)
    clean_metrics = None if clean_holdout is None else scored(clean_holdout)[0]
    note = ""
    if missing:
        note = (
            f"v{version.version} was trained under {trained_under.label} and scored "
            f"with {', '.join(missing)} missing, as {spec.label} does not describe them"
        )
    return ChampionScore(
        version=str(version.version), metrics=metrics, note=note, clean_metrics=clean_metrics
    )


def _scored(
    loaded: Any, rows: pd.DataFrame, *, current: DatasetSpec, trained: DatasetSpec
) -> tuple[dict[str, float], list[str]]:
    """A model's metrics on rows read under ``current``, as its requests reach it (it was
    trained under ``trained``), and the features it misses."""
    seen, missing = evolution.as_trained_under(rows, current=current, trained=trained)
    return model.score(loaded, seen, trained), missing


TAG_REQUEST = "gate.request"
"""Who asked the gate to judge a version again (``lakeloop model promote VERSION``), on which
commit's holdout, and its verdict."""
PROMOTED_ON_REQUEST = "promoted on request"


@dataclass(frozen=True)
class Rejudged:
    """A registered version judged again by the gate, against the current champion, on the
    holdout of one commit's data under the current description."""

    version: str
    commit_id: str
    holdout_rows: int
    score: ChampionScore
    champion: ChampionScore | None
    reasons: list[str]

    def summary(self) -> str:
        ours = f"MAE {in_units(self.score.metrics['mae'])}"
        theirs = (
            f" vs champion v{self.champion.version}'s {in_units(self.champion.metrics['mae'])}"
            if self.champion
            else ""
        )
        verdict = "; ".join(self.reasons) if self.reasons else "passes the gate"
        return (
            f"on the holdout of {self.commit_id:.12} ({self.holdout_rows} rows): "
            f"{ours}{theirs}: {verdict}"
        )


def rejudge(
    client: MlflowClient,
    settings: Settings,
    *,
    version: str,
    rows: Split,
    spec: DatasetSpec,
    commit_id: str,
) -> Rejudged:
    """Judge ``version`` as the gate judges a new model, on ``rows`` (the training split of
    ``commit_id``'s data, normally the production branch's newest commit: the data both models
    will meet): the thresholds, the baseline of always predicting that split's training median,
    and no worse than the current champion on the same holdout (and on the rows that predate
    folded feedback, when the data holds some: ``rows.clean_holdout``). The split is by content
    hash or by time, so its holdout rows are ones neither model trained on unless data was
    removed since one of them was trained."""
    name = settings.mlflow.model_name
    target = client.get_model_version(name, version)  # raises for a version that does not exist
    current = champion(client, settings)
    if current is not None and str(current.version) == str(target.version):
        raise LookupError(f"{name} v{version} is already the champion")
    clean = rows.clean_holdout
    score = score_version(settings, target, rows.holdout, spec, clean_holdout=clean)
    theirs = (
        score_version(settings, current, rows.holdout, spec, clean_holdout=clean)
        if current
        else None
    )
    reasons = model.gate_failures(
        score.metrics | {"baseline_mae": model.baseline_mae(rows, spec)},
        settings.training,
        bars=model.thresholds(spec, settings.training),
        champion=theirs.metrics if theirs else None,
        champion_name=f"champion v{theirs.version}" if theirs else "the champion",
        clean=model.clean_scores(
            clean, score.clean_metrics, theirs.clean_metrics if theirs else None
        ),
    )
    return Rejudged(
        version=str(target.version),
        commit_id=commit_id,
        holdout_rows=len(rows.holdout),
        score=score,
        champion=theirs,
        reasons=reasons,
    )


def record_request(
    client: MlflowClient, settings: Settings, judged: Rejudged, *, by: str
) -> str | None:
    """Record who asked and the verdict on the version; when it passed, make it the champion
    (recording the one it replaces, for rollback). Returns that previous champion's version."""
    name, version = settings.mlflow.model_name, judged.version
    client.set_model_version_tag(name, version, TAG_REQUEST, f"{by}: {judged.summary()}")
    if judged.reasons:
        return None
    current = champion(client, settings)
    previous = str(current.version) if current is not None else None
    _make_champion(
        client, settings, version=version, decision=PROMOTED_ON_REQUEST, previous=previous
    )
    return previous


def record_decision(
    client: MlflowClient,
    settings: Settings,
    *,
    logged: LoggedModel,
    reasons: list[str],
    champion: ChampionScore | None,
) -> None:
    """Record the gate's verdict: the champion's scores on the run, the reasons on the version,
    one alias move, then the decision. A rejected version stays registered as ``challenger`` with
    its reason; a promoted one becomes champion and records the champion it replaced, for rollback.

    The decision tag is written last: until then the version stays ``pending``, so an attempt cut
    off half-way is recognisable (and undone by the next one, ``abandon_incomplete``). Every write
    is idempotent, so a retry simply does it again."""
    name = settings.mlflow.model_name
    with mlflow_step(settings, f"recording the gate decision on {name} v{logged.version}"):
        current = client.get_model_version(name, logged.version)
        if (current.tags or {}).get(TAG_GATE) == GATE_ABANDONED:
            raise TrackingError(
                f"{name} v{logged.version} was abandoned by a later attempt on its commit; "
                "not promoting it"
            )
        _refuse_if_already_trained(client, settings, version=current, run_id=logged.run_id)
        if champion is not None:
            for metric, value in champion.metrics.items():
                client.log_metric(logged.run_id, f"champion_{metric}", value)
            for metric, value in (champion.clean_metrics or {}).items():
                client.log_metric(
                    logged.run_id, f"champion_{evaluation.CLEAN_HOLDOUT}_{metric}", value
                )
        client.set_model_version_tag(
            name, logged.version, TAG_GATE_REASONS, "; ".join(reasons) or "-"
        )
        if reasons:
            client.set_registered_model_alias(name, CHALLENGER_ALIAS, logged.version)
            client.set_model_version_tag(name, logged.version, TAG_GATE, "rejected")
        else:
            _make_champion(
                client,
                settings,
                version=logged.version,
                decision="promoted",
                previous=champion.version if champion is not None else None,
            )


def _make_champion(
    client: MlflowClient, settings: Settings, *, version: str, decision: str, previous: str | None
) -> None:
    """Point the champion alias at ``version``: the champion it replaces is recorded first (for
    rollback), the decision last (until then an interrupted promotion is recognisable). Every
    promotion goes through here: the gate's, one on request, one by hand."""
    name = settings.mlflow.model_name
    if previous is not None:
        client.set_model_version_tag(name, version, TAG_PREVIOUS, previous)
    client.set_registered_model_alias(name, settings.mlflow.champion_alias, version)
    client.set_model_version_tag(name, version, TAG_GATE, decision)


def _refuse_if_already_trained(
    client: MlflowClient, settings: Settings, *, version: ModelVersion, run_id: str
) -> None:
    """Two attempts on one commit at once (the same trigger twice before either finished) both
    train; the gate runs one at a time (the flow's promotion lock), so the second to get here
    finds the commit trained by the first. Its version is abandoned and its run marked failed
    instead of judged, so the commit counts as trained once and is never promoted twice."""
    commit_id = (version.tags or {}).get(TAG_COMMIT)
    if not commit_id or (version.tags or {}).get(TAG_AGAIN) == "true":
        return  # a deliberate new attempt is judged on its own
    tuned = TUNING_TRIALS in client.get_run(run_id).data.params
    earlier = run_for_commit(client, settings, commit_id=commit_id, tuned=tuned)
    if earlier is None or earlier.info.run_id == run_id:
        return  # nothing judged yet, or this very attempt (a retry after the decision)
    name = settings.mlflow.model_name
    reason = f"commit {commit_id} was trained meanwhile by run {earlier.info.run_id}"
    client.set_model_version_tag(name, version.version, TAG_GATE_REASONS, reason)
    client.set_model_version_tag(name, version.version, TAG_GATE, GATE_ABANDONED)
    client.set_terminated(run_id, "FAILED")
    raise TrackingError(f"{name} v{version.version} not judged: {reason}")


def restore_champion(
    client: MlflowClient, settings: Settings, *, failed: str, previous: str | None
) -> None:
    """Undo a promotion whose deployment failed: the alias goes back (or away, if there was no
    champion before) and the version says why."""
    _point_champion(client, settings, version=previous)
    client.set_model_version_tag(
        settings.mlflow.model_name, failed, TAG_GATE, "rolled back: deployment check failed"
    )


def _point_champion(client: MlflowClient, settings: Settings, *, version: str | None) -> None:
    """Point the champion alias at ``version``, or remove it when there is none."""
    name, alias = settings.mlflow.model_name, settings.mlflow.champion_alias
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)


TAG_OVERRIDE = "gate.override"
"""Who promoted a version by hand over the gate's decision, and why."""
PROMOTED_BY_HAND = "promoted by hand"


def promote_by_hand(
    client: MlflowClient, settings: Settings, *, version: str, reason: str, by: str
) -> str | None:
    """Make ``version`` the champion over the gate's decision, recording who did it and why (its
    gate reasons stay), and the champion it replaces so that ``rollback`` can undo it. Returns
    that previous champion's version."""
    name = settings.mlflow.model_name
    target = client.get_model_version(name, version)  # raises for a version that does not exist
    current = champion(client, settings)
    if current is not None and str(current.version) == str(target.version):
        raise LookupError(f"{name} v{version} is already the champion")
    previous = str(current.version) if current is not None else None
    client.set_model_version_tag(name, version, TAG_OVERRIDE, f"{by}: {reason}")
    _make_champion(client, settings, version=version, decision=PROMOTED_BY_HAND, previous=previous)
    return previous


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
