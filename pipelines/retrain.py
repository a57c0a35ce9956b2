"""Retraining: what a drift event starts (``flows/retrain.py`` runs :func:`retrain` with Prefect).

Retraining the same data gives the same model (training is deterministic), so a retrain first
adds what production has taught since: the prices reported for the drifted window's predictions
go into lakeFS by write-audit-publish (the same pre-merge checks as any ingest, a commit with its
lineage). Then the training flow runs on the newest commit of the production branch with the
trigger recorded as drift, and the usual gate decides whether the new model is promoted. When
nothing new arrived, the training flow finds the commit already trained and says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lakeloop import datagate, grafana, lakefs_client, model, pushmetrics, registry
from lakeloop.datagate import FEEDBACK_PREFIX
from lakeloop.dataset import DatasetSpec
from lakeloop.events import (
    DRIFT_DETECTED,
    MODEL_VERSION,
    SKIP_TRAINING_KEY,
    WINDOW,
    model_labels,
    retrain_finished,
)
from lakeloop.ingest import inspect_source, write_parquet
from lakeloop.settings import Settings
from monitoring.labels import FoldRecord, LabelCheck, Provenance, check_labels, provenance
from monitoring.store import append_fold
from monitoring.window import REPORTED_AT, REPORTED_BY, labelled_rows, window_reports
from pipelines.runtime import PLAIN, Runtime, run_logger, step
from pipelines.train import TrainCommit


@dataclass(frozen=True)
class DriftWindow:
    """The window a retrain answers: whose predictions drifted, and when (the drift event's
    payload; an alert's has no bounds, so no prices are folded for it)."""

    champion_version: str
    window_id: str
    start: datetime | None = None
    end: datetime | None = None


def feedback_table_name(window_id: str) -> str:
    """File name of a window's folded feedback: the same window is never folded twice."""
    return FEEDBACK_PREFIX + re.sub(r"[^A-Za-z0-9._-]+", "_", window_id) + ".parquet"


@dataclass(frozen=True)
class Fold:
    """What a retrain did with its window's reported values."""

    note: str
    """One line for the log and the outcome: what happened to them."""
    published: lakefs_client.Published | None = None
    check: LabelCheck | None = None
    provenance: Provenance | None = None
    held_at: str = ""
    """Where the rows are when the check held them back (``lakeloop ingest`` publishes them,
    through the usual checks, if the shift is real)."""

    @property
    def folded(self) -> bool:
        return self.published is not None and self.published.merged

    @property
    def rows(self) -> int:
        return self.published.rows if self.folded and self.published else 0


REPORT_COLUMNS = ("prediction", REPORTED_AT, REPORTED_BY)
"""What the check and the provenance read beside the stored columns."""


def _held_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / "monitoring" / "feedback" / name


@step(retries=2, delay_seconds=5)
def holdout_bias(settings: Settings, version: str) -> float | None:
    """The median log ratio of actual to predicted on ``version``'s holdout (its usual bias);
    ``None`` for a version trained before it was recorded, or with a target not always
    positive."""
    record = registry.version_record(registry.connect(settings), settings, version)
    return record.metrics.get(model.MEDIAN_LOG_RATIO) if record else None


@step(retries=2, delay_seconds=5)
def fold_feedback(
    settings: Settings,
    spec: DatasetSpec,
    window: DriftWindow,
    start: datetime,
    end: datetime,
    *,
    bias: float | None = None,
) -> Fold:
    """Check the window's reported prices against the champion's predictions, given its holdout
    ``bias`` (:mod:`monitoring.labels`), and publish them to the production branch when they
    pass, with who reported them; nothing when there are none or this window was already
    folded. The merge carries ``lakeloop.skip_training`` so the webhook does not start a second
    training of the commit this retrain trains."""
    logger = run_logger()
    champion_version, window_id = window.champion_version, window.window_id
    reports = window_reports(
        settings.object_store, spec, model_version=champion_version, start=start, end=end
    )
    if reports.empty:
        return Fold(note=f"no prices were reported for window {window_id}; nothing to add")
    name = feedback_table_name(window_id)
    client = lakefs_client.connect(settings)
    main = lakefs_client.main_reference(client, settings)
    if any(path.endswith(f"/{name}") for path in lakefs_client.table_paths(main, settings)):
        return Fold(note=f"the prices of window {window_id} are already in lakeFS")
    # A sale main already holds (a house predicted and sold again at the same price; a window
    # that overlaps one folded before) is not news, and would break the history's uniqueness
    # rule for the whole window: leave it out, and judge only what would be added.
    table = labelled_rows(reports, spec, keep=REPORT_COLUMNS)
    path = write_parquet(table[spec.stored_columns], _held_path(settings, name))
    known = datagate.overlap(
        datagate.for_settings(settings, spec),
        client,
        repository=settings.lakefs.repository,
        ref=settings.lakefs.branch,
        source=inspect_source(path),
        frame=table[spec.stored_columns],
    )
    if known.present_rows:
        logger.info("%d reported sales are already on main; folding the others", known.present_rows)
        table = table[~known.present]
        if table.empty:
            return Fold(note="every reported sale is already on main")
        path = write_parquet(table[spec.stored_columns], path)
    check = check_labels(
        table,
        spec,
        holdout_bias=bias,
        tolerance=settings.monitoring.feedback_tolerance,
        min_rows=settings.monitoring.policy.min_rows,
    )
    reported = provenance(table)
    if not check.passed:
        return Fold(
            note=f"the prices of window {window_id} were held back: {check.reason}",
            check=check,
            provenance=reported,
            held_at=str(path),
        )
    published = lakefs_client.publish(
        client,
        settings,
        [inspect_source(path)],
        name=f"feedback-v{champion_version}",
        source=f"prices reported for champion v{champion_version}'s predictions, {window_id}",
        dataset_version=spec.version,
        description=spec.to_yaml(),
        metadata={
            SKIP_TRAINING_KEY: "true",
            "lakeloop.trigger": "drift",
            WINDOW: window_id,
            "skipped_existing": str(known.present_rows),
            **reported.metadata(),
        },
    )
    note = (
        f"{published.rows} reported prices folded in {published.commit_id}"
        if published.merged
        else f"the reported prices were refused by the data checks: {published.rejection}"
    )
    return Fold(note=note, published=published, check=check, provenance=reported)


def report_fold(
    settings: Settings, window: DriftWindow, fold: Fold, *, runtime: Runtime = PLAIN
) -> None:
    """Tell the user what happened to the window's reported values where they look: the run's
    log and a Prefect artifact, ``lakeloop report`` (the monitoring store), the Pushgateway,
    and a Grafana annotation when they were held back."""
    logger = run_logger()
    if fold.check is None:
        logger.info("%s", fold.note)
        return
    record = FoldRecord(
        time=datetime.now(UTC),
        champion_version=window.champion_version,
        window_id=window.window_id,
        folded=fold.folded,
        reason=fold.note,
        check=fold.check,
        provenance=fold.provenance,
        commit_id=fold.published.commit_id or "" if fold.published else "",
        held_at=fold.held_at,
    )
    append_fold(settings.monitoring_store, record)
    pushmetrics.push_feedback_check(
        settings.observability.pushgateway_url,
        model_name=settings.mlflow.model_name,
        folded=fold.folded,
        factor=fold.check.factor,
    )
    if fold.folded:
        logger.info("%s", fold.note)
    else:
        logger.warning("%s", fold.note)
        if fold.held_at:
            logger.warning(
                "the rows are in %s; if the shift is real, `lakeloop ingest %s` publishes them "
                "through the usual checks",
                fold.held_at,
                fold.held_at,
            )
        grafana.annotate(
            settings,
            text=f"feedback of v{window.champion_version} not folded: {fold.note}",
            tags=[grafana.DRIFT],
        )
    runtime.artifact("feedback-check", _fold_markdown(record), f"feedback of {window.window_id}")


def _fold_markdown(record: FoldRecord) -> str:
    lines = [
        f"Reported prices for champion v{record.champion_version}, window `{record.window_id}`: "
        + ("**folded**" if record.folded else "**not folded**"),
        "",
        record.reason,
    ]
    if record.provenance is not None:
        lines += ["", f"Reported: {record.provenance.describe()}."]
    if record.held_at:
        lines += [
            "",
            f"The rows are in `{record.held_at}`: if the shift is real, "
            f"`lakeloop ingest {record.held_at}` publishes them through the usual checks.",
        ]
    return "\n".join(lines)


@step(retries=3, delay_seconds=5)
def newest_commit(settings: Settings) -> str:
    return lakefs_client.head_commit(lakefs_client.connect(settings), settings)


def retrain(
    settings: Settings,
    spec: DatasetSpec,
    window: DriftWindow,
    *,
    reason: str = DRIFT_DETECTED,
    train: TrainCommit,
    runtime: Runtime = PLAIN,
) -> dict[str, Any]:
    """Add the window's reported prices to lakeFS, then train on the newest production commit
    with ``train``; the outcome goes out as a ``lakeloop.retrain.*`` event."""
    logger = run_logger()
    run = runtime.step
    champion_version, window_id = window.champion_version, window.window_id
    logger.info("retraining champion v%s after %s (window %s)", champion_version, reason, window_id)
    fold = Fold(note="the alert named no window: no prices to add")
    if window.start is not None and window.end is not None:
        bias = run(holdout_bias)(settings, champion_version)
        fold = run(fold_feedback)(settings, spec, window, window.start, window.end, bias=bias)
    report_fold(settings, window, fold, runtime=runtime)
    commit_id = run(newest_commit)(settings)
    result = train(repository=settings.lakefs.repository, commit_id=commit_id, reason=reason)
    outcome = {
        **result,
        "commit_id": commit_id,
        "champion_version": champion_version,
        "window_id": window_id,
        "feedback_rows": fold.rows,
        "feedback": fold.note,
    }
    if result["status"] == "skipped":
        outcome["reason"] = (
            f"{result.get('reason')}: no new data on {settings.lakefs.branch} since the last "
            "training; ingest new data or report sale prices (POST /v1/feedback) to retrain"
            if fold.check is None or fold.check.passed
            else f"{result.get('reason')}: {fold.note}"
        )
        logger.warning("%s", outcome["reason"])
    runtime.event(
        retrain_finished(result["status"]),
        resource=model_labels(
            settings.mlflow.model_name,
            **{MODEL_VERSION: str(result.get("version", champion_version))},
        ),
        payload=outcome,
    )
    return outcome
