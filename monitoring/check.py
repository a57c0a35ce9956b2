"""One monitor step, composed: compute -> parse -> persist -> decide (-> send).

The monitor flow may call this in one task or call the pieces as separate tasks; either way the
order below matters: the history line is written last, after the event was handed over, so an
event Prefect never accepted is not recorded as a retrain (which would start a cooldown for a
retrain that never happened).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec
import pandas as pd

from lakeloop.dataset import DatasetSpec
from lakeloop.settings import DriftPolicy
from lakeloop.stores.objects import ObjectStore
from monitoring.drift import run_drift, run_quality
from monitoring.events import drift_event
from monitoring.history import Decision, HistoryEntry, Window
from monitoring.parse import DriftSummary, QualitySummary, parse_drift, parse_quality
from monitoring.policy import decide
from monitoring.store import (
    append_history,
    metrics_registry,
    push_metrics,
    read_history,
    save_report,
)

EventSender = Callable[[dict[str, object]], None]
"""Hands an event to Prefect, e.g. ``functools.partial(lakeloop.events.emit, api_url)``."""


class CheckResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one monitor step found, decided and wrote."""

    entry: HistoryEntry
    event: dict[str, object] | None
    """The drift event when the policy asked for a retrain (sent when a sender was given)."""
    report_path: str
    """Where the Evidently report is (a path, or an ``s3://`` URL)."""
    history_path: str


def check_window(
    *,
    current: pd.DataFrame,
    reference: pd.DataFrame,
    spec: DatasetSpec,
    window: Window,
    champion_version: str,
    model_name: str,
    store: ObjectStore,
    now: datetime,
    policy: DriftPolicy,
    baseline_quality: dict[str, float] | None = None,
    retrain_running: bool = False,
    prediction_column: str = "prediction",
    pushgateway_url: str | None = None,
    send: EventSender | None = None,
) -> CheckResult:
    """Run the whole monitor step on one window, keeping its report and history in ``store``
    (the monitoring store); quality is measured when ``current`` holds the description's target
    with at least one value (feedback prices)."""
    drift_run = run_drift(
        current=current,
        reference=reference,
        spec=spec,
        prediction_column=prediction_column,
        drift_share=policy.drift_share_threshold,
    )
    drift = parse_drift(
        drift_run.result,
        features=spec.feature_names,
        rows_current=drift_run.rows_current,
        rows_reference=drift_run.rows_reference,
        prediction_column=prediction_column,
    )
    quality = _quality(current, spec=spec, prediction_column=prediction_column)
    report_path = save_report(
        store, drift_run.snapshot, champion_version=champion_version, window_id=window.id
    )
    decision = decide(
        drift=drift,
        quality=quality,
        baseline_quality=baseline_quality,
        history=read_history(store, since=now - policy.cooldown),
        now=now,
        policy=policy,
        champion_version=champion_version,
        retrain_running=retrain_running,
    )
    event = None
    if decision.retrain:
        event = drift_event(
            champion_version=champion_version,
            window=window,
            summary=drift,
            report_path=report_path,
            model_name=model_name,
            quality=quality,
            reason=decision.reason,
            occurred=now,
        )
    entry, error = _send(
        event,
        send,
        entry=HistoryEntry(
            time=now,
            champion_version=champion_version,
            window=window,
            drift=drift,
            quality=quality,
            decision=decision,
            report_path=report_path,
            event_id=None if event is None else event["id"],
        ),
    )
    if pushgateway_url:
        registry = metrics_registry(
            drift=drift, quality=quality, decision=entry.decision, now=now, holdout=baseline_quality
        )
        push_metrics(pushgateway_url, registry, champion_version=champion_version)
    history_path = append_history(store, entry)
    if error is not None:
        raise error
    return CheckResult(entry=entry, event=event, report_path=report_path, history_path=history_path)


def _quality(
    current: pd.DataFrame, *, spec: DatasetSpec, prediction_column: str
) -> QualitySummary | None:
    target = spec.target.name
    if target not in current.columns or prediction_column not in current.columns:
        return None
    if not current[target].notna().any():
        return None
    quality_run = run_quality(
        current_with_actuals=current, spec=spec, prediction_column=prediction_column
    )
    return parse_quality(quality_run.result, rows=quality_run.rows_current)


def _send(
    event: dict[str, object] | None, send: EventSender | None, *, entry: HistoryEntry
) -> tuple[HistoryEntry, Exception | None]:
    """Hand the event over; if that fails, record the run as not retraining (so the cooldown does
    not start) and give the error back to raise after the run is recorded."""
    if event is None or send is None:
        return entry, None
    try:
        send(event)
    # Any failure (DeliveryError, a network error) means the retrain was not requested.
    except Exception as error:
        failed = Decision(
            retrain=False, reason=f"{entry.decision.reason}; event not delivered: {error}"
        )
        return msgspec.structs.replace(entry, decision=failed, event_id=None), error
    return entry, None


__all__ = ["CheckResult", "DriftSummary", "EventSender", "check_window"]
