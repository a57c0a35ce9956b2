"""Training: a lakeFS commit in, a registered (and maybe promoted) model out.

:func:`train_commit` is the whole sequence the training flow runs (``flows/train.py`` wraps it
with Prefect); :func:`train_and_promote` is its second half, from validated data to the gate's
decision, which tests that bring their own data call. Each step is a plain function over the
core package, called through the :class:`~pipelines.runtime.Runtime` the caller gives.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import lakefs
import numpy as np
import pandas as pd

from lakeloop import (
    cluster,
    datagate,
    evaluation,
    events,
    grafana,
    lakefs_client,
    loop,
    model,
    pushmetrics,
    registry,
)
from lakeloop.dataset import DatasetSpec
from lakeloop.settings import Settings
from lakeloop.validation.checks import ValidationResult
from lakeloop.validation.report import write_report
from pipelines.runtime import PLAIN, Runtime, promotion_lock, run_logger, step

if TYPE_CHECKING:
    from distributed import Client


@step(retries=2, delay_seconds=5)
def already_trained(settings: Settings, commit_id: str, *, tune: bool = False) -> str | None:
    """The run id that already trained on this commit (tuned, with ``tune``), if any."""
    client = registry.connect(settings)
    run = registry.run_for_commit(client, settings, commit_id=commit_id, tuned=tune)
    return run.info.run_id if run else None


@step(retries=3, delay_seconds=5)
def read_commit(
    settings: Settings, repository: str, commit_id: str
) -> dict[str, lakefs_client.StoredTable]:
    """Every table under the data prefix, exactly as it was at this commit, by path."""
    client = lakefs_client.connect(settings)
    return lakefs_client.read_tables(client, settings, repository=repository, ref=commit_id)


@step(retries=3, delay_seconds=5)
def list_commit(
    settings: Settings, spec: DatasetSpec, repository: str, commit_id: str
) -> dict[str, datagate.Stored]:
    """Every table under the data prefix at this commit, by path, as the data gate sees it
    (checksum, the description it was ingested with), from one listing: nothing is read. For a
    training on a Dask cluster, whose workers read the tables."""
    reference = lakefs.Repository(repository, client=lakefs_client.connect(settings)).ref(commit_id)
    return datagate.for_settings(settings, spec).stored(reference)


@contextlib.contextmanager
def cluster_session(settings: Settings) -> Iterator[Client | None]:
    """A client of the configured Dask cluster for the whole training (its workers keep the
    rows between steps), or ``None`` without one: training in process."""
    if settings.training.dask_scheduler is None:
        yield None
        return
    with cluster.connect(settings.training) as client:
        run_logger().info(
            "training on the Dask cluster at %s: its workers read the commit from lakeFS at %s",
            settings.training.dask_scheduler,
            cluster.LakeFSAccess.for_settings(settings).endpoint,
        )
        yield client


def validate_on_cluster(
    settings: Settings,
    spec: DatasetSpec,
    client: Client,
    source: cluster.Source,
    tables: dict[str, datagate.Stored],
) -> datagate.StateVerdict:
    """The data gate's verdict on the commit, as :func:`validate` reaches it, the tables whose
    check is not kept checked on the cluster's workers (this process reads none)."""
    verdict = datagate.for_settings(settings, spec).judge_tables(
        tables,
        check_elsewhere=lambda unchecked: cluster.check_tables(client, source, unchecked, spec),
    )
    run_logger().info("data checks: %s", verdict.how())
    return verdict


def cluster_data(
    settings: Settings,
    spec: DatasetSpec,
    client: Client,
    source: cluster.Source,
    tables: dict[str, datagate.Stored],
) -> cluster.ClusterData:
    """The tables that can train under the current description, read on the cluster's workers
    (:func:`training_frame`'s rules; tables it cannot use are named in the log, and no usable
    row at all fails the run)."""
    gate = datagate.for_settings(settings, spec)
    left_out = gate.left_out(list(tables), lambda path: tables[path].ingested)
    for path, why in left_out.items():
        run_logger().warning("%s is left out of training under %s: %s", path, spec.label, why)
    usable = [
        cluster.TableRef(path=path, checksum=table.checksum, ingested=table.ingested)
        for path, table in tables.items()
        if path not in left_out
    ]
    data = cluster.load(client, source, usable, spec)
    if not sum(data.rows):
        raise ValueError(
            f"no table on this commit can train under {spec.label}: "
            + "; ".join(f"{path}: {why}" for path, why in left_out.items())
        )
    run_logger().info(
        "%d rows in %d tables read on the cluster's workers", sum(data.rows), len(data.rows)
    )
    return data


@step(retries=3, delay_seconds=5)
def ingested_under(
    settings: Settings, spec: DatasetSpec, repository: str, commit_id: str, paths: list[str]
) -> dict[str, DatasetSpec]:
    """The description each table was ingested with (the current one where none was stored)."""
    reference = lakefs.Repository(repository, client=lakefs_client.connect(settings)).ref(commit_id)
    described = datagate.for_settings(settings, spec).ingested_under(reference)
    return {path: described(path) for path in paths}


def validate(
    settings: Settings,
    tables: dict[str, lakefs_client.StoredTable],
    spec: DatasetSpec,
    ingested: dict[str, DatasetSpec] | None = None,
) -> datagate.StateVerdict:
    """The data gate's verdict on the commit (each table by the description it was ingested with,
    the history rules across them: what the pre-merge hook judged). A state the hook already
    judged (the merge that made this commit) is not judged again: its verdict is reused. Data
    that reached the branch around the hook is judged here in full."""
    described = ingested or {}
    verdict = datagate.for_settings(settings, spec).judge_stored(
        tables, lambda path: described.get(path, spec)
    )
    run_logger().info("data checks: %s", verdict.how())
    return verdict


def write_validation_report(
    settings: Settings, spec: DatasetSpec, commit_id: str, result: ValidationResult
) -> Path:
    """The data checks' report on a commit (JSON, markdown, Data Docs) in the state folder, with a
    copy in the settings' store; returns its folder."""
    folder = settings.state_dir / "validation" / commit_id
    write_report(
        result,
        folder,
        spec=spec,
        store=settings.object_store.child(f"validation/{commit_id}"),
    )
    return folder


def training_frame(
    settings: Settings,
    spec: DatasetSpec,
    tables: dict[str, lakefs_client.StoredTable],
    ingested: dict[str, DatasetSpec],
) -> datagate.TrainingData:
    """The tables as training data under the current description (lakeloop.evolution's rules),
    which rows come from folded feedback; tables it cannot use are named in the log, and no
    usable row at all fails the run."""
    gate = datagate.for_settings(settings, spec)
    data = gate.training_frame(tables, lambda path: ingested.get(path, spec))
    for path, why in data.left_out.items():
        run_logger().warning("%s is left out of training under %s: %s", path, spec.label, why)
    if data.frame.empty:
        raise ValueError(
            f"no table on this commit can train under {spec.label}: "
            + "; ".join(f"{path}: {why}" for path, why in data.left_out.items())
        )
    return data


@step(retries=2, delay_seconds=5)
def record_blocked(
    settings: Settings, repository: str, commit_id: str, result: ValidationResult
) -> registry.Blocked:
    """Training is stopped until the data is repaired: say so on the registered model (the API's
    /readyz, its metrics and `lakeloop status` read it there)."""
    client = registry.connect(settings)
    current = registry.champion(client, settings)
    behind = None
    if current is not None and current.tags.get(registry.TAG_COMMIT):
        behind = lakefs_client.commits_since(
            lakefs_client.connect(settings),
            repository=repository,
            ref=commit_id,
            ancestor=current.tags[registry.TAG_COMMIT],
        )
    blocked = registry.Blocked(
        commit_id=commit_id,
        since=datetime.now(UTC).isoformat(timespec="seconds"),
        tables=result.failing_tables,
        reason="\n".join(result.failures),
        commits_behind=behind,
    )
    registry.record_blocked(client, settings, blocked)
    return blocked


@step(retries=2, delay_seconds=5)
def clear_blocked(settings: Settings) -> None:
    """The data passed the checks: training is no longer blocked."""
    if registry.clear_blocked(registry.connect(settings), settings):
        run_logger().info("training is no longer blocked: the data passes the checks again")


@step(retries=2, delay_seconds=5)
def record_refused_data(settings: Settings, lineage: registry.Lineage, report: Path) -> str:
    registry.connect(settings)
    return registry.log_refused_data(settings, lineage=lineage, report=report)


TrainingData: TypeAlias = pd.DataFrame | cluster.ClusterData
"""Training rows in this process, or held by a Dask cluster's workers."""


def fit(
    frame: TrainingData,
    spec: DatasetSpec,
    settings: Settings,
    *,
    tune: bool = False,
    inherited: tuple[str, dict[str, Any]] | None = None,
    feedback: np.ndarray | None = None,
) -> model.TrainedModel:
    """Train with the best of a seeded search, or with the hyperparameters a tuned champion hands
    on (``inherited``: its version and them), or with the configured ones; ``feedback`` marks the
    rows of folded feedback tables (their model is judged on the rows that predate them too).
    Rows a Dask cluster holds are trained on there (each table's rows know whether they are
    feedback)."""
    if isinstance(frame, cluster.ClusterData):
        params = None if inherited is None else inherited[1]
        trained = cluster.train(frame, spec, settings.training, params=params, tune=tune)
        if inherited is not None:
            trained = replace(trained, hyperparameters_from=f"champion v{inherited[0]}")
        return trained
    if tune:
        return model.tune(frame, spec, settings.training, feedback=feedback)
    if inherited is None:
        return model.train(frame, spec, settings.training, feedback=feedback)
    version, params = inherited
    trained = model.train(frame, spec, settings.training, params=params, feedback=feedback)
    return replace(trained, hyperparameters_from=f"champion v{version}")


@step(retries=2, delay_seconds=5)
def tuning_due(settings: Settings) -> bool:
    """Whether the settings' tuning policy asks this training to search hyperparameters."""
    return registry.tuning_due(registry.connect(settings), settings)


@step(retries=2, delay_seconds=5)
def champion_hyperparameters(settings: Settings) -> tuple[str, dict[str, Any]] | None:
    """The champion's version and its tuned hyperparameters, which a training without a search
    starts from (so new data can win against a tuned champion); ``None`` when it has none."""
    client = registry.connect(settings)
    current = registry.champion(client, settings)
    if current is None:
        return None
    params = registry.handed_on(client, current)
    return None if params is None else (str(current.version), params)


@step(retries=2, delay_seconds=5)
def log_and_register(
    settings: Settings,
    trained: model.TrainedModel,
    *,
    spec: DatasetSpec,
    frame: TrainingData,
    lineage: registry.Lineage,
) -> registry.LoggedModel:
    """Log the run and register its version, after closing what an earlier attempt on the same
    commit (this task's last try, or a failed flow run) left half done."""
    client = registry.connect(settings)
    for done in registry.abandon_incomplete(client, settings, commit_id=lineage.commit_id):
        run_logger().warning("earlier attempt on %s: %s", lineage.commit_id, done)
    rows = frame if isinstance(frame, pd.DataFrame) else None  # a cluster's stay there
    return registry.log_trained(settings, trained, spec=spec, training_data=rows, lineage=lineage)


@step(retries=2, delay_seconds=5)
def score_champion(
    settings: Settings, trained: model.TrainedModel, spec: DatasetSpec
) -> registry.ChampionScore | None:
    """The current champion's metrics on the new model's holdout, and on its clean holdout when
    it learned from folded feedback (None before the first one).
    A champion trained under another description is scored on the same rows as its requests
    will reach it under this one: features this description no longer has are missing."""
    current = registry.champion(registry.connect(settings), settings)
    if current is None:
        return None
    scored = registry.score_version(
        settings, current, trained.holdout, spec, clean_holdout=trained.clean_holdout
    )
    if scored.reused:
        run_logger().info(
            "champion v%s's score on this holdout was kept from an earlier training: "
            "not loaded or scored again",
            scored.version,
        )
    if scored.note:
        run_logger().warning("champion %s", scored.note)
    return scored


@step(retries=2, delay_seconds=5)
def gate_and_promote(
    settings: Settings,
    trained: model.TrainedModel,
    logged: registry.LoggedModel,
    champion: registry.ChampionScore | None,
    spec: DatasetSpec,
) -> list[str]:
    """Promote when the model meets the thresholds and is no worse than the champion on the same
    holdout (and, when it learned from folded feedback, on the rows that predate it); returns the
    reasons it was not promoted."""
    failures = model.gate_failures(
        trained.metrics,
        settings.training,
        bars=model.thresholds(spec, settings.training),
        champion=champion.metrics if champion else None,
        champion_name=f"champion v{champion.version}" if champion else "the champion",
        clean=model.clean_scores(
            trained.clean_holdout,
            trained.clean_metrics,
            champion.clean_metrics if champion else None,
        ),
    )
    registry.record_decision(
        registry.connect(settings), settings, logged=logged, reasons=failures, champion=champion
    )
    return failures


def verify_deployment(
    settings: Settings,
    trained: model.TrainedModel,
    logged: registry.LoggedModel,
    champion: registry.ChampionScore | None,
) -> None:
    """The API must serve the new champion and answer a smoke prediction in time; otherwise the
    alias goes back to the previous champion and the run fails loudly."""
    records = json.loads(trained.input_example.to_json(orient="records"))
    try:
        loop.verify_served(
            settings,
            version=logged.version,
            records=records,
            timeout=settings.api.deploy_timeout_seconds,
        )
    except loop.LoopError as error:
        previous = champion.version if champion else None
        registry.restore_champion(
            registry.connect(settings), settings, failed=logged.version, previous=previous
        )
        raise RuntimeError(
            f"version {logged.version} was promoted but not served ({error}); "
            f"champion restored to {previous or 'none'}"
        ) from error


@step(retries=2, delay_seconds=5)
def record_reports(
    settings: Settings,
    spec: DatasetSpec,
    trained: model.TrainedModel,
    logged: registry.LoggedModel,
    *,
    commit_id: str,
    report: Path | None = None,
    validation: ValidationResult | None = None,
) -> Path | None:
    """What a reviewer reads and nothing decides, once the gate has decided (and the API serves a
    promoted version): the data checks' report, written now from ``validation`` when only that is
    given, and the evaluation plots, both logged to the version's run. Returns the report's
    folder."""
    if validation is not None:
        report = write_validation_report(settings, spec, commit_id, validation)
    registry.log_reports(settings, trained, spec, run_id=logged.run_id, report=report)
    return report


def report_validation(
    settings: Settings, spec: DatasetSpec, commit_id: str, result: ValidationResult
) -> None:
    """Validation outcome to the Pushgateway (when configured; never fails the run)."""
    pushmetrics.push_validation(
        settings.observability.pushgateway_url,
        dataset=spec.name,
        commit_id=commit_id,
        success=result.success,
        failed_expectations=len(result.failures),
        rows=result.rows,
    )


def report_training(
    settings: Settings,
    logged: registry.LoggedModel,
    metrics: dict[str, float],
    *,
    promoted: bool,
    trigger: str,
    commit_id: str,
) -> None:
    """The new version's holdout metrics and the gate's decision to the Pushgateway, and the
    promotion as a Grafana annotation (each only when configured; neither fails the run)."""
    pushmetrics.push_training(
        settings.observability.pushgateway_url,
        model_name=settings.mlflow.model_name,
        version=logged.version,
        metrics=metrics,
        promoted=promoted,
        trigger=trigger,
    )
    if promoted:
        grafana.annotate(
            settings,
            text=f"{settings.mlflow.model_name} v{logged.version} promoted "
            f"(trained on {commit_id:.12}, trigger {trigger})",
            tags=[grafana.PROMOTION],
        )


def refusal(result: ValidationResult, blocked: registry.Blocked) -> str:
    """What failed, in which table, and how to repair it, for the run's error."""
    lines = [f"- {line}" for line in result.failures]
    behind = (
        f"; the champion is {blocked.commits_behind} commits behind"
        if blocked.commits_behind is not None
        else ""
    )
    lines.append(
        f"Training stays blocked until {', '.join(blocked.tables) or 'the data'} is repaired"
        f"{behind}. Repair: `lakeloop data remove <path>` removes a table from "
        "main through the same checks, and that commit trains."
    )
    return "\n".join(lines)


class TrainCommit(Protocol):
    """Trains one commit (a retrain, a reconcile): the training flow (a subflow run), or
    :func:`train_commit` in process."""

    def __call__(self, repository: str, commit_id: str, reason: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Outcome:
    """One training's result: the version registered and what the gate made of it."""

    trained: model.TrainedModel
    logged: registry.LoggedModel
    champion: registry.ChampionScore | None
    failures: list[str]
    """The gate's reasons for not promoting; empty when the version was promoted."""
    summary: str
    """The markdown summary (the flow's ``training-summary`` artifact)."""

    @property
    def promoted(self) -> bool:
        return not self.failures

    def result(self) -> dict[str, Any]:
        """What the training flow returns."""
        return {
            "status": "promoted" if self.promoted else "registered",
            "version": self.logged.version,
            "run_id": self.logged.run_id,
            "metrics": self.trained.metrics,
            "gate_failures": self.failures,
            "params": self.trained.params,
        }


def check_ids(repository: str, commit_id: str) -> None:
    """The ids name folders and MLflow tags: refuse what lakeFS itself would never produce."""
    if not events.REPOSITORY_ID.fullmatch(repository) or not events.COMMIT_ID.fullmatch(commit_id):
        raise ValueError(
            f"not a lakeFS repository and commit id: {repository!r}, {commit_id!r} "
            "(a commit id is 64 hexadecimal digits)"
        )


def train_commit(
    settings: Settings,
    spec: DatasetSpec,
    repository: str,
    commit_id: str,
    *,
    reason: str = "manual",
    tune: bool = False,
    again: bool = False,
    runtime: Runtime = PLAIN,
) -> dict[str, Any]:
    """Validate the data at a lakeFS commit, train (with ``tune``, the best of
    ``training.tune_trials`` hyperparameter trials), register, and promote if good. A commit
    already trained is skipped unless ``again`` asks for a new, recorded attempt. Data the checks
    refuse blocks training (recorded on the registered model) and raises ``ValueError`` naming
    every failed check. With ``training.dask_scheduler`` set, the cluster's workers read, check
    and train on the commit (:mod:`lakeloop.cluster`); this process holds metadata only."""
    check_ids(repository, commit_id)
    logger = run_logger()
    run = runtime.step
    logger.info("training on %s@%s (%s)", repository, commit_id, reason)
    # Zeros first, so this run's promotion or refusal is the counters' first increase.
    pushmetrics.seed_counters(
        settings.observability.pushgateway_url,
        dataset=spec.name,
        model_name=settings.mlflow.model_name,
    )
    if reason.startswith("lakefs."):
        grafana.annotate(
            settings, text=f"{reason} {repository}@{commit_id:.12}", tags=[grafana.MERGE]
        )

    if not again and (previous := run(already_trained)(settings, commit_id, tune=tune)):
        logger.info("commit %s already trained by run %s; nothing to do", commit_id, previous)
        return {"status": "skipped", "reason": "already trained", "run_id": previous}

    with cluster_session(settings) as client:
        return _train_commit(
            settings,
            spec,
            repository,
            commit_id,
            reason=reason,
            tune=tune,
            again=again,
            runtime=runtime,
            client=client,
        )


def _train_commit(
    settings: Settings,
    spec: DatasetSpec,
    repository: str,
    commit_id: str,
    *,
    reason: str,
    tune: bool,
    again: bool,
    runtime: Runtime,
    client: Client | None,
) -> dict[str, Any]:
    """:func:`train_commit` from reading the commit on: in this process, or, with a ``client``
    of a Dask cluster, with the cluster's workers reading, checking and training on it."""
    logger = run_logger()
    run = runtime.step
    if client is None:
        tables = run(read_commit)(settings, repository, commit_id)
        listed = list(tables)
    else:  # the workers read the tables: here, only their list
        stored = run(list_commit)(settings, spec, repository, commit_id)
        listed = list(stored)
    if not listed:
        logger.info(
            "no tables under %s at %s; nothing to train", settings.lakefs.data_prefix, commit_id
        )
        return {"status": "skipped", "reason": "no data"}

    if client is None:
        ingested = run(ingested_under)(settings, spec, repository, commit_id, list(tables))
        verdict = run(validate)(settings, tables, spec, ingested)
    else:
        source = cluster.Source(cluster.LakeFSAccess.for_settings(settings), repository, commit_id)
        verdict = run(validate_on_cluster)(settings, spec, client, source, stored)
    validation = verdict.result
    runtime.artifact(
        "validation",
        f"{validation.to_markdown()}\n\n_{verdict.how()}_\n",
        f"data checks on {commit_id:.12}",
    )
    lineage = registry.Lineage(
        repository=repository,
        commit_id=commit_id,
        validation=validation.outcome,
        trigger=registry.trigger_kind(reason),
        dataset=spec.label,
        dataset_digest=spec.digest,
        again=again,
    )
    if not validation.success:
        report = run(write_validation_report)(settings, spec, commit_id, validation)
        run(report_validation)(settings, spec, commit_id, validation)
        run_id = run(record_refused_data)(settings, lineage, report)
        blocked = run(record_blocked)(settings, repository, commit_id, validation)
        raise ValueError(
            f"data at {commit_id} failed the checks; nothing trained (MLflow run {run_id}):\n"
            + refusal(validation, blocked)
        )
    run(clear_blocked)(settings)
    if client is None:
        data = run(training_frame)(settings, spec, tables, ingested)
        frame: TrainingData = data.frame
        feedback: np.ndarray | None = data.feedback
    else:
        frame, feedback = run(cluster_data)(settings, spec, client, source, stored), None
    outcome = train_and_promote(
        settings,
        spec,
        frame,
        feedback=feedback,
        lineage=lineage,
        validation=validation,
        tune=tune,
        runtime=runtime,
    )
    run(report_validation)(settings, spec, commit_id, validation)
    return outcome.result() | {"validation": verdict.how()}


def judge(
    settings: Settings,
    spec: DatasetSpec,
    trained: model.TrainedModel,
    logged: registry.LoggedModel,
    *,
    runtime: Runtime = PLAIN,
) -> tuple[registry.ChampionScore | None, list[str]]:
    """One promotion at a time per model (a later run judges against the champion the earlier
    one left: a global concurrency limit with one slot in Prefect, see deployments/serve.py):
    score the champion on the new model's holdout, gate, promote, and check the API serves the
    new champion. Returns the champion's score and the gate's reasons for not promoting."""
    run = runtime.step
    with runtime.lock(promotion_lock(settings)):
        champion = run(score_champion)(settings, trained, spec)
        failures = run(gate_and_promote)(settings, trained, logged, champion, spec)
        if not failures and settings.api.verify_deploy:
            run(verify_deployment)(settings, trained, logged, champion)
    return champion, failures


def train_and_promote(
    settings: Settings,
    spec: DatasetSpec,
    frame: TrainingData,
    *,
    lineage: registry.Lineage,
    report: Path | None = None,
    validation: ValidationResult | None = None,
    tune: bool = False,
    feedback: np.ndarray | None = None,
    runtime: Runtime = PLAIN,
) -> Outcome:
    """From validated training data to the gate's decision: fit (searching hyperparameters when
    asked or when the tuning policy says so, else from what a tuned champion hands on), log and
    register, then — one promotion at a time per model — score the champion on the same holdout,
    gate, promote, and check the API serves the new champion. Only then the reports nothing
    decides: the plots and the data checks' report (the folder ``report``, or one written from
    ``validation``) on the run, the metrics pushed, the summary. ``feedback`` marks the rows of
    ``frame`` that come from folded feedback tables (:class:`lakeloop.datagate.TrainingData`)."""
    run = runtime.step
    tune = tune or run(tuning_due)(settings)
    inherited = None if tune else run(champion_hyperparameters)(settings)
    trained = run(fit)(frame, spec, settings, tune=tune, inherited=inherited, feedback=feedback)
    logged = run(log_and_register)(settings, trained, spec=spec, frame=frame, lineage=lineage)
    champion, failures = judge(settings, spec, trained, logged, runtime=runtime)
    run(record_reports)(
        settings,
        spec,
        trained,
        logged,
        commit_id=lineage.commit_id,
        report=report,
        validation=validation,
    )
    run(report_training)(
        settings,
        logged,
        trained.metrics,
        promoted=not failures,
        trigger=lineage.trigger,
        commit_id=lineage.commit_id,
    )
    summary = evaluation.summary_markdown(
        model_name=settings.mlflow.model_name,
        version=logged.version,
        run_id=logged.run_id,
        metrics=trained.metrics,
        holdout_rows=trained.holdout_rows,
        lineage=lineage.tags(),
        champion=(champion.version, champion.metrics) if champion else None,
        champion_note=champion.note if champion else "",
        gate_failures=failures,
        trials=len(trained.trials),
        hyperparameters_from=trained.hyperparameters_from,
        clean=model.clean_scores(
            trained.clean_holdout,
            trained.clean_metrics,
            champion.clean_metrics if champion else None,
        ),
    )
    runtime.artifact("training-summary", summary, f"train-{lineage.commit_id:.8}")
    run_logger().info("%s", summary.splitlines()[0])
    return Outcome(trained, logged, champion, failures, summary)
