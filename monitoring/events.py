"""The drift event: what the monitor tells Prefect when the policy asks for a retrain.

Its id is a uuid5 of (event name, model, champion version, window), so re-running the monitor on
the same window re-sends the same event and Prefect drops the repeat. Send it with
:func:`lakeloop.events.emit`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from lakeloop.events import DRIFT_DETECTED, MODEL_VERSION, WINDOW, event_id, model_labels
from monitoring.history import Window
from monitoring.parse import DriftSummary, QualitySummary


def drift_event(
    *,
    champion_version: str,
    window: Window,
    summary: DriftSummary,
    report_path: str | None,
    model_name: str,
    quality: QualitySummary | None = None,
    reason: str = "",
    occurred: datetime | None = None,
) -> dict[str, Any]:
    """The ``lakeloop.drift.detected`` event for this champion and window (not yet sent). The
    payload names the window's bounds, so the retrain can fold the prices reported for it."""
    return {
        "id": event_id(DRIFT_DETECTED, model_name, champion_version, window.id),
        "occurred": (occurred or datetime.now(UTC)).isoformat(),
        "event": DRIFT_DETECTED,
        "resource": model_labels(
            model_name, **{MODEL_VERSION: champion_version, WINDOW: window.id}
        ),
        "payload": {
            "model_name": model_name,
            "champion_version": champion_version,
            "window_id": window.id,
            "window_start": None if window.start is None else window.start.isoformat(),
            "window_end": None if window.end is None else window.end.isoformat(),
            "window_rows": window.rows,
            "reason": reason,
            "report_path": report_path,
            "drift_share": summary.drift_share,
            "dataset_drift": summary.dataset_drift,
            "drifted_features": list(summary.drifted_features),
            "per_feature": {
                name: msgspec.to_builtins(column) for name, column in summary.per_feature.items()
            },
            "prediction_drift": summary.prediction_drift,
            "rows_current": summary.rows_current,
            "rows_reference": summary.rows_reference,
            "quality": None if quality is None else msgspec.to_builtins(quality),
        },
        "related": [],
    }
