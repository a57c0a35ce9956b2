"""Persist: the numbers to a Prometheus Pushgateway (for Grafana), every run to the history (for
``lakeloop`` to print and for the policy's cooldown), and Evidently's HTML report.

The history and the reports live in the monitoring store (``Settings.monitoring_store``: a local
folder or a prefix in an object store). An object store cannot append, so the history is one JSON
object per run under ``history/``, named by the run's time so that listing them reads them in
order; a ``history.jsonl`` left by an earlier version is read first.

Each function takes its store or URL as a parameter: the entry point reads the settings.
"""

from __future__ import annotations

import logging
import re
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import msgspec
from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

from lakeloop.dataset import in_units
from lakeloop.pushmetrics import replace_group
from lakeloop.stores.objects import ObjectStore
from monitoring.history import Decision, HistoryEntry
from monitoring.labels import FoldRecord
from monitoring.parse import DriftSummary, QualitySummary

logger = logging.getLogger(__name__)

JOB = "lakeloop_monitor"
"""Pushgateway job name; each champion version is its own group under it."""
HISTORY_DIR = "history"
LEGACY_HISTORY_FILE = "history.jsonl"
"""The single appended file earlier versions kept; still read, never written."""
REPORTS_DIR = "reports"
FOLDS_DIR = "folds"
_STAMP = "%Y%m%dT%H%M%S%fZ"

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(HistoryEntry)
_FOLD_DECODER = msgspec.json.Decoder(FoldRecord)


class HtmlReport(Protocol):
    """What :func:`save_report` needs of an Evidently snapshot."""

    def save_html(self, filename: str) -> None: ...


def metrics_registry(
    *,
    drift: DriftSummary,
    quality: QualitySummary | None,
    decision: Decision | None,
    now: datetime,
    holdout: Mapping[str, float] | None = None,
) -> CollectorRegistry:
    """A fresh registry holding one monitor run's numbers as gauges (a new registry per run, so
    a feature that disappears from the description disappears from the push too), and the
    champion's ``holdout`` metrics the window's quality is measured against."""
    registry = CollectorRegistry()

    def gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, documentation, labels, registry=registry)

    gauge("lakeloop_drift_share", "Share of features Evidently found drifted.").set(
        drift.drift_share
    )
    gauge("lakeloop_dataset_drift", "1 when Evidently calls the window drifted.").set(
        int(drift.dataset_drift)
    )
    score = gauge(
        "lakeloop_feature_drift_score",
        "Drift score per feature: a p-value or a distance, as the method label says.",
        ("feature", "method"),
    )
    drifted = gauge("lakeloop_feature_drifted", "1 when the feature drifted.", ("feature",))
    for name, column in drift.per_feature.items():
        score.labels(feature=name, method=column.method).set(column.score)
        drifted.labels(feature=name).set(int(column.drifted))
    if drift.prediction is not None:
        gauge(
            "lakeloop_prediction_drift_score", "Drift score of the predictions.", ("method",)
        ).labels(method=drift.prediction.method).set(drift.prediction.score)
    rows = gauge("lakeloop_monitor_window_rows", "Rows compared, per frame.", ("frame",))
    rows.labels(frame="current").set(drift.rows_current)
    rows.labels(frame="reference").set(drift.rows_reference)
    if quality is not None:
        gauge("lakeloop_quality_mae", "MAE on the window's rows with feedback.").set(quality.mae)
        gauge("lakeloop_quality_rmse", "RMSE on the window's rows with feedback.").set(quality.rmse)
        gauge("lakeloop_quality_rows", "Rows of the window with feedback.").set(quality.rows)
    if decision is not None:
        gauge("lakeloop_retrain_decision", "1 when the policy asked for a retrain.").set(
            int(decision.retrain)
        )
    gauge("lakeloop_monitor_last_run_timestamp_seconds", "When the monitor last ran.").set(
        now.timestamp()
    )
    _holdout_gauge(registry, holdout)
    return registry


def _holdout_gauge(registry: CollectorRegistry, holdout: Mapping[str, float] | None) -> None:
    """The champion's holdout metrics, in the group of its version: what its live MAE is
    compared with (the training job's holdout is the last model *trained*, promoted or not)."""
    if not holdout:
        return
    metric = Gauge(
        "lakeloop_champion_holdout_metric",
        "The champion's holdout metrics when it was trained (MAE, RMSE in target units).",
        ("metric",),
        registry=registry,
    )
    for name, value in sorted(holdout.items()):
        metric.labels(metric=name).set(value)


def push_metrics(
    gateway_url: str,
    registry: CollectorRegistry,
    *,
    champion_version: str,
    job: str = JOB,
    timeout: float = 10.0,
) -> None:
    """Replace the champion's group on the Pushgateway with ``registry`` (HTTP PUT)."""
    replace_group(
        gateway_url,
        registry,
        job=job,
        grouping_key={"model_version": champion_version},
        timeout=timeout,
    )


def push_heartbeat(
    gateway_url: str | None,
    *,
    champion_version: str,
    now: datetime,
    holdout: Mapping[str, float] | None = None,
    timeout: float = 10.0,
) -> bool:
    """Tell the Pushgateway the monitor ran though it checked nothing (too few rows): a gauge
    (and the champion's ``holdout`` metrics, known before any window is) added to the champion's
    group with an HTTP POST, which keeps the drift numbers there and moves the group's
    ``push_time_seconds``, what ``LakeloopMonitorStale`` watches. Returns whether the
    Pushgateway took it; a failure is a warning, never an error of the run."""
    if gateway_url is None:
        return False
    registry = CollectorRegistry()
    Gauge(
        "lakeloop_monitor_last_attempt_timestamp_seconds",
        "When the monitor last ran, a check or not.",
        registry=registry,
    ).set(now.timestamp())
    _holdout_gauge(registry, holdout)
    try:
        pushadd_to_gateway(
            gateway_url,
            job=JOB,
            registry=registry,
            grouping_key={"model_version": champion_version},
            timeout=timeout,
        )
    except OSError as error:  # urllib: down, or refused the push
        logger.warning(
            "monitor heartbeat not pushed to the Pushgateway at %s: %s", gateway_url, error
        )
        return False
    return True


def save_report(
    store: ObjectStore,
    report: HtmlReport,
    *,
    champion_version: str,
    window_id: str,
    kind: str = "drift",
) -> str:
    """Save Evidently's HTML report under ``reports/`` in ``store`` and return where it is (a
    path or an ``s3://`` URL); the name carries the champion and the window, so re-running a
    window overwrites its own report. Evidently 0.7 writes its script and icon font into the
    file: the report opens with no internet (tests/integration/test_pages_offline.py)."""
    name = f"{kind}-v{_safe(champion_version)}-{_safe(window_id)}.html"
    with tempfile.TemporaryDirectory(prefix="lakeloop-report-") as scratch:
        rendered = Path(scratch) / name  # Evidently writes to a path, not to bytes
        report.save_html(str(rendered))
        return store.put(f"{REPORTS_DIR}/{name}", rendered.read_bytes())


def report_key(location: str) -> str:
    """The key of a report that :func:`save_report` put at ``location``."""
    return f"{REPORTS_DIR}/{location.rsplit('/', 1)[-1]}"


@contextmanager
def report_file(store: ObjectStore, location: str | None) -> Iterator[Path | None]:
    """A local file holding the report :func:`save_report` put at ``location`` (a temporary copy
    when the store is S3: MLflow uploads only files); ``None`` when the run saved none."""
    if not location:
        yield None
        return
    with store.local_copy(report_key(location)) as path:
        yield path


def append_history(store: ObjectStore, entry: HistoryEntry) -> str:
    """Record one run as its own object under ``history/`` in ``store`` and return where it is.
    The name starts with the run's time (UTC), then when it was written (runs of the same time
    keep the order they were recorded in), so listing the history reads it oldest first."""
    return store.put(_entry_key(HISTORY_DIR, entry.time), _ENCODER.encode(entry))


def _entry_key(folder: str, at: datetime) -> str:
    stamp = at.astimezone(UTC).strftime(_STAMP)
    written = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
    return f"{folder}/{stamp}-{written}.json"


def append_fold(store: ObjectStore, record: FoldRecord) -> str:
    """Record what a retrain did with a window's reported values (folded or held back) under
    ``folds/``, as the history records monitor runs."""
    return store.put(_entry_key(FOLDS_DIR, record.time), _ENCODER.encode(record))


def read_folds(store: ObjectStore, *, last: int) -> list[FoldRecord]:
    """The ``last`` fold decisions recorded in ``store``, oldest first."""
    keys = [key for key in store.list_keys(FOLDS_DIR) if key.endswith(".json")][-last:]
    return [_FOLD_DECODER.decode(data) for data in store.get_many(keys)]


def read_history(
    store: ObjectStore, *, since: datetime | None = None, last: int | None = None
) -> list[HistoryEntry]:
    """The runs recorded in ``store``, oldest first ([] when there is none): every run, or only
    those at or after ``since``, or only the ``last`` ones. Objects are named by the run's time,
    so a bounded read fetches only the objects it returns, however long the history grows; a
    ``history.jsonl`` left by an earlier version is always read (it no longer grows)."""
    entries = []
    if store.exists(LEGACY_HISTORY_FILE):
        lines = store.get(LEGACY_HISTORY_FILE).splitlines()
        entries = [_DECODER.decode(line) for line in lines if line.strip()]
        if since is not None:
            entries = [entry for entry in entries if entry.time >= since]
    keys = history_keys(store)
    if since is not None:
        first = f"{HISTORY_DIR}/{since.astimezone(UTC).strftime(_STAMP)}"
        keys = [key for key in keys if key >= first]
    if last is not None:
        keys = keys[-last:]
    entries += [_DECODER.decode(data) for data in store.get_many(keys)]
    return entries if last is None else entries[-last:]


def history_keys(store: ObjectStore) -> list[str]:
    """The history's objects in ``store``, oldest run first (names only: nothing is read)."""
    return [key for key in store.list_keys(HISTORY_DIR) if key.endswith(".json")]


def describe(entry: HistoryEntry) -> str:
    """One line a person reads: when, which champion and window, the numbers, the decision."""
    quality = "" if entry.quality is None else f" mae={in_units(entry.quality.mae)}"
    verdict = "RETRAIN" if entry.decision.retrain else "ok"
    return (
        f"{entry.time:%Y-%m-%d %H:%M:%S} v{entry.champion_version} window={entry.window.id} "
        f"rows={entry.drift.rows_current} drift_share={entry.drift.drift_share:.2f}{quality} "
        f"{verdict}: {entry.decision.reason}"
    )


def _safe(text: str) -> str:
    # Window ids hold ISO times ("2024-05-01T10:00:00+00:00"): keep file names portable.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


@dataclass(frozen=True)
class RunRecord:
    """One monitor run as MLflow records it: the decision as tags, the numbers as metrics,
    Evidently's HTML report as an artifact."""

    name: str
    tags: dict[str, str]
    metrics: dict[str, float]
    report: str | None
    """Where the report is in the monitoring store (:func:`report_file` opens it)."""


def mlflow_record(entry: HistoryEntry, *, model_name: str) -> RunRecord:
    """The monitor run ``entry`` as MLflow records it (``registry.log_monitor_run`` logs it)."""
    tags = {
        "lakeloop.kind": "monitor",
        "model_name": model_name,
        "champion_version": entry.champion_version,
        "window": entry.window.id,
        "decision": "retrain" if entry.decision.retrain else "none",
        "decision.reason": entry.decision.reason[:5000],
        **({"event_id": entry.event_id} if entry.event_id else {}),
    }
    metrics = {
        "drift_share": entry.drift.drift_share,
        "drifted_features": float(len(entry.drift.drifted_features)),
        "rows_current": float(entry.drift.rows_current),
        "rows_reference": float(entry.drift.rows_reference),
    }
    metrics |= {f"drift_score.{name}": c.score for name, c in entry.drift.per_feature.items()}
    if entry.drift.prediction is not None:
        metrics["prediction_drift_score"] = entry.drift.prediction.score
    if entry.quality is not None:
        metrics |= {"mae": entry.quality.mae, "rmse": entry.quality.rmse}
        metrics["feedback_rows"] = float(entry.quality.rows)
    return RunRecord(
        name=f"monitor-v{entry.champion_version}",
        tags=tags,
        metrics=metrics,
        report=entry.report_path or None,
    )
