"""Monitoring: the champion's live predictions against its own training data, and a drift event
when the policy says the model should be retrained.

:func:`monitor_once` is the sequence the monitor flow runs (``flows/monitor.py`` wraps it with
Prefect); the work is in :mod:`monitoring` (select, compute, parse, persist, decide) and the core
package.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from lakeloop import events, grafana, lakefs_client, loop, registry
from lakeloop.dataset import DatasetSpec, in_units, load_spec
from lakeloop.settings import Settings
from monitoring.check import CheckResult, check_window
from monitoring.history import Window
from monitoring.reference import cached_reference, reference_frame
from monitoring.store import describe, mlflow_record, push_heartbeat, report_file
from monitoring.window import champion_window
from pipelines.runtime import PLAIN, Runtime, run_logger, step


@dataclass(frozen=True)
class Champion:
    """The served model as the monitor needs it: what it was trained on and how well it did."""

    version: str
    repository: str
    commit_id: str
    holdout: dict[str, float]
    spec: DatasetSpec
    """The description it was trained under (its features are what the API logs for it)."""


@step(retries=2, delay_seconds=5)
def find_champion(settings: Settings) -> Champion | None:
    record = registry.version_record(registry.connect(settings), settings)
    if record is None:
        return None
    return Champion(
        version=record.number,
        repository=record.repository or settings.lakefs.repository,
        commit_id=record.commit_id,
        holdout={name: record.metrics[name] for name in ("mae", "rmse")},
        spec=registry.description_of(record.version) or load_spec(settings.dataset),
    )


def read_window(
    settings: Settings, spec: DatasetSpec, champion: Champion, rows: int, minutes: float | None
) -> tuple[pd.DataFrame, Window]:
    since = None if minutes is None else datetime.now(UTC) - timedelta(minutes=minutes)
    return champion_window(
        settings.object_store,
        spec,
        model_version=champion.version,
        rows=rows,
        since=since,
        by_event_time=settings.monitoring.window_by == "event_time",
    )


@step(retries=2, delay_seconds=5)
def champion_reference(settings: Settings, spec: DatasetSpec, champion: Champion) -> pd.DataFrame:
    """The champion's training data at its lakeFS commit, sampled, with its predictions."""

    def build() -> pd.DataFrame:
        data = lakefs_client.read_table(
            lakefs_client.connect(settings),
            settings,
            repository=champion.repository,
            ref=champion.commit_id,
        )
        registry.connect(settings)
        model = registry.load_version(settings, version=champion.version)
        return reference_frame(
            data,
            model,
            spec,
            rows=settings.monitoring.reference_rows,
            seed=settings.training.seed,
        )

    return cached_reference(settings.monitoring_store, model_version=champion.version, build=build)


@step(retries=2, delay_seconds=5)
def retrain_running(settings: Settings, champion: Champion) -> bool:
    """Whether a retrain started for this champion has not finished yet."""
    active = loop.runs_of_flow(settings, loop.RETRAIN_FLOW, active=True)
    return any(run.parameters.get("champion_version") == champion.version for run in active)


def check(
    settings: Settings,
    spec: DatasetSpec,
    champion: Champion,
    *,
    current: pd.DataFrame,
    reference: pd.DataFrame,
    window: Window,
    running: bool,
) -> CheckResult:
    """Evidently, parse, persist and decide; the drift event goes to Prefect when it fires."""
    return check_window(
        current=current,
        reference=reference,
        spec=spec,
        window=window,
        champion_version=champion.version,
        model_name=settings.mlflow.model_name,
        store=settings.monitoring_store,
        now=datetime.now(UTC),
        policy=settings.monitoring.policy,
        baseline_quality=champion.holdout,
        retrain_running=running,
        pushgateway_url=settings.observability.pushgateway_url,
        send=functools.partial(
            events.emit, settings.prefect_api_url, attempts=settings.monitoring.event_attempts
        ),
    )


@step(retries=2, delay_seconds=5)
def record_in_mlflow(settings: Settings, result: CheckResult) -> str:
    """The monitor run in MLflow, in an experiment of its own (``<experiment>-monitoring``)."""
    record = mlflow_record(result.entry, model_name=settings.mlflow.model_name)
    with report_file(settings.monitoring_store, record.report) as report:
        return registry.log_monitor_run(
            settings,
            name=record.name,
            tags=record.tags,
            metrics=record.metrics,
            artifact=None if report is None else str(report),
            artifact_path="evidently",
        )


def summary_markdown(result: CheckResult, *, run_id: str, settings: Settings) -> str:
    """The Prefect artifact: the decision first, then the numbers and where the report is."""
    entry = result.entry
    drift = entry.drift
    verdict = "**retrain requested**" if entry.decision.retrain else "no retrain"
    lines = [
        f"# Monitor: champion v{entry.champion_version} — {verdict}",
        "",
        f"{entry.decision.reason}",
        "",
        "| | |",
        "|---|---|",
        f"| window | `{entry.window.id}` ({drift.rows_current} predictions) |",
        f"| reference | {drift.rows_reference} rows of the champion's training data |",
        f"| drift share | {drift.drift_share:.0%} "
        f"({', '.join(drift.drifted_features) or 'no feature'} drifted) |",
    ]
    if drift.prediction is not None:
        lines.append(
            f"| prediction drift | {drift.prediction.score:.3g} ({drift.prediction.method}, "
            f"{'drifted' if drift.prediction.drifted else 'stable'}) |"
        )
    if entry.quality is not None:
        lines.append(
            f"| feedback | MAE {in_units(entry.quality.mae)} on {entry.quality.rows} "
            "reported prices |"
        )
    if entry.event_id:
        lines.append(f"| event | `lakeloop.drift.detected` `{entry.event_id}` |")
    lines += [
        f"| Evidently report | `{result.report_path}` |",
        f"| MLflow run | {settings.mlflow_tracking_uri}/#/experiments/runs/{run_id} "
        f"(`evidently/` artifacts) |",
    ]
    return "\n".join(lines)


def monitor_once(
    settings: Settings,
    *,
    window_rows: int | None = None,
    window_minutes: float | None = None,
    runtime: Runtime = PLAIN,
) -> dict[str, Any]:
    """Compare the champion's recent predictions with its training data; ask for a retrain when
    drift or rising error passes the policy's thresholds."""
    logger = run_logger()
    run = runtime.step
    rows = window_rows or settings.monitoring.window_rows
    minutes = window_minutes or settings.monitoring.window_minutes

    champion = run(find_champion)(settings)
    if champion is None:
        logger.info("no champion yet: nothing is served, so there is nothing to monitor")
        return {"status": "skipped", "reason": "no champion"}
    # The champion is watched under its own description, which may be older than the file's.
    spec = champion.spec
    current, window = run(read_window)(settings, spec, champion, rows, minutes)
    needed = settings.monitoring.policy.min_rows
    if window.rows < needed:
        reason = (
            f"{window.rows} logged predictions of champion v{champion.version}, fewer than the "
            f"{needed} a check needs (LAKELOOP_MONITORING__POLICY__MIN_ROWS)"
        )
        logger.info("%s; nothing checked", reason)
        # Still a sign of life for the staleness alert: the monitor runs, traffic is low.
        push_heartbeat(
            settings.observability.pushgateway_url,
            champion_version=champion.version,
            now=datetime.now(UTC),
            holdout=champion.holdout,
        )
        return {"status": "skipped", "reason": reason, "champion_version": champion.version}

    reference = run(champion_reference)(settings, spec, champion)
    result = run(check)(
        settings,
        spec,
        champion,
        current=current,
        reference=reference,
        window=window,
        running=run(retrain_running)(settings, champion),
    )
    run_id = run(record_in_mlflow)(settings, result)
    if result.entry.event_id:
        grafana.annotate(
            settings,
            text=f"drift on v{champion.version}: {result.entry.decision.reason}",
            tags=[grafana.DRIFT],
        )
    runtime.artifact(
        "drift-report",
        summary_markdown(result, run_id=run_id, settings=settings),
        f"monitor of champion v{champion.version}",
    )
    logger.info("%s", describe(result.entry))
    entry = result.entry
    return {
        "status": "retrain" if entry.decision.retrain else "ok",
        "reason": entry.decision.reason,
        "champion_version": champion.version,
        "window": window.id,
        "drift_share": entry.drift.drift_share,
        "event_id": entry.event_id,
        "report": str(result.report_path),
        "mlflow_run_id": run_id,
    }
