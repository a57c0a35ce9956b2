"""Retrain flow: what a drift event starts.

Retraining the same data gives the same model (training is deterministic), so a retrain first
adds what production has taught since: the prices reported for the drifted window's predictions
go into lakeFS by write-audit-publish (the same pre-merge checks as any ingest, a commit with its
lineage). Then the training flow runs on the newest commit of the production branch with the
trigger recorded as drift, and the usual gate decides whether the new model is promoted. When
nothing new arrived, the training flow finds the commit already trained and says so.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from flows.train import train_on_commit
from lakeloop import datagate, lakefs_client, loop
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.events import DRIFT_DETECTED, SKIP_TRAINING_KEY, model_resource, retrain_finished
from lakeloop.ingest import inspect_source, write_parquet
from lakeloop.settings import Settings, load_settings
from monitoring.window import window_feedback

FEEDBACK_PREFIX = "feedback-"


def feedback_table_name(window_id: str) -> str:
    """File name of a window's folded feedback: the same window is never folded twice."""
    return FEEDBACK_PREFIX + re.sub(r"[^A-Za-z0-9._-]+", "_", window_id) + ".parquet"


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def fold_feedback(
    settings: Settings,
    spec: DatasetSpec,
    *,
    champion_version: str,
    window_id: str,
    start: datetime,
    end: datetime,
) -> lakefs_client.Published | None:
    """Publish the window's reported prices to the production branch; ``None`` when there are none
    or this window was already folded. The merge carries ``lakeloop.skip_training`` so the webhook
    does not start a second training of the commit this retrain trains."""
    logger = get_run_logger()
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
            "lakeloop.window": window_id,
            "skipped_existing": str(known.present_rows),
        },
    )


@task(retries=3, retry_delay_seconds=5, cache_policy=NO_CACHE)
def newest_commit(settings: Settings) -> str:
    return lakefs_client.head_commit(lakefs_client.connect(settings), settings)


@flow(name=loop.RETRAIN_FLOW, flow_run_name="retrain-v{champion_version}", log_prints=True)
def retrain_on_drift(
    champion_version: str,
    window_id: str,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    reason: str = DRIFT_DETECTED,
) -> dict[str, Any]:
    """Add the window's reported prices to lakeFS, then train on the newest production commit."""
    logger = get_run_logger()
    settings = load_settings()
    spec = load_spec(settings.dataset)
    logger.info("retraining champion v%s after %s (window %s)", champion_version, reason, window_id)
    folded = None
    if window_start is not None and window_end is not None:
        folded = fold_feedback(
            settings,
            spec,
            champion_version=champion_version,
            window_id=window_id,
            start=window_start,
            end=window_end,
        )
    if folded is not None and folded.rejection:
        logger.warning("the reported prices were refused by the data checks: %s", folded.rejection)
    commit_id = newest_commit(settings)
    result = train_on_commit(settings.lakefs.repository, commit_id, reason=reason)
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
    emit_event(
        event=retrain_finished(result["status"]),
        resource={
            "prefect.resource.id": model_resource(settings.mlflow.model_name),
            "prefect.resource.name": settings.mlflow.model_name,
            "lakeloop.model_version": str(result.get("version", champion_version)),
        },
        payload=outcome,
    )
    return outcome
