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
from datetime import datetime
from typing import Any

from lakeloop import datagate, lakefs_client
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
from monitoring.window import window_feedback
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


@step(retries=2, delay_seconds=5)
def fold_feedback(
    settings: Settings, spec: DatasetSpec, window: DriftWindow, start: datetime, end: datetime
) -> lakefs_client.Published | None:
    """Publish the window's reported prices to the production branch; ``None`` when there are none
    or this window was already folded. The merge carries ``lakeloop.skip_training`` so the webhook
    does not start a second training of the commit this retrain trains."""
    logger = run_logger()
    champion_version, window_id = window.champion_version, window.window_id
    rows = window_feedback(
        settings.object_store, spec, model_version=champion_version, start=start, end=end
    )
    if rows.empty:
        logger.info("no prices were reported for window %s; nothing to add", window_id)
        return None
    name = feedback_table_name(window_id)
    client = lakefs_client.connect(settings)
    main = lakefs_client.main_reference(client, settings)
    if any(path.endswith(f"/{name}") for path in lakefs_client.table_paths(main, settings)):
        logger.info("the prices of window %s are already in lakeFS", window_id)
        return None
    # A sale main already holds (a house predicted and sold again at the same price) is not news,
    # and would break the history's uniqueness rule for the whole window: leave it out.
    path = write_parquet(rows, settings.state_dir / "monitoring" / "feedback" / name)
    known = datagate.overlap(
        datagate.for_settings(settings, spec),
        client,
        repository=settings.lakefs.repository,
        ref=settings.lakefs.branch,
        source=inspect_source(path),
        frame=rows,
    )
    if known.present_rows:
        logger.info("%d reported sales are already on main; folding the others", known.present_rows)
        rows = rows[~known.present]
        if rows.empty:
            return None
        path = write_parquet(rows, path)
    return lakefs_client.publish(
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
        },
    )


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
    folded = None
    if window.start is not None and window.end is not None:
        folded = run(fold_feedback)(settings, spec, window, window.start, window.end)
    if folded is not None and folded.rejection:
        logger.warning("the reported prices were refused by the data checks: %s", folded.rejection)
    commit_id = run(newest_commit)(settings)
    result = train(repository=settings.lakefs.repository, commit_id=commit_id, reason=reason)
    outcome = {
        **result,
        "commit_id": commit_id,
        "champion_version": champion_version,
        "window_id": window_id,
        "feedback_rows": folded.rows if folded and folded.commit_id else 0,
    }
    if result["status"] == "skipped":
        outcome["reason"] = (
            f"{result.get('reason')}: no new data on {settings.lakefs.branch} since the last "
            "training; ingest new data or report sale prices (POST /v1/feedback) to retrain"
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
