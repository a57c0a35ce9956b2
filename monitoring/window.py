"""Select: the window of live predictions a monitor run looks at, with the prices reported since.

The window is the champion's own predictions only (a window mixing two models would blame the new
one for the old one's traffic), the most recent ``rows`` of them, optionally only those since a
time. Feedback is joined on the prediction id; its price lands in the target's column, so the same
frame feeds Evidently's drift (features, prediction) and quality (target vs prediction) checks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from api.prediction_log import read_feedback_log, read_prediction_log
from lakeloop.dataset import DatasetSpec
from monitoring.history import Window

_ID_TIME = "%Y%m%dT%H%M%S.%fZ"


def champion_window(
    state_dir: Path,
    spec: DatasetSpec,
    *,
    model_version: str,
    rows: int,
    since: datetime | None = None,
) -> tuple[pd.DataFrame, Window]:
    """The most recent ``rows`` predictions of ``model_version`` (at or after ``since``) with any
    reported price in the target column, oldest first, and the window that names them."""
    log = _predictions_of(state_dir, model_version, since=since).tail(rows).reset_index(drop=True)
    if log.empty:
        return log, Window(id=f"v{model_version}/empty", rows=0)
    start = log["predicted_at"].iloc[0].to_pydatetime()
    end = log["predicted_at"].iloc[-1].to_pydatetime()
    frame = with_feedback(log, read_feedback_log(state_dir, since=start), spec=spec)
    window = Window(id=window_id(start, end, len(frame)), start=start, end=end, rows=len(frame))
    return frame, window


def window_feedback(
    state_dir: Path, spec: DatasetSpec, *, model_version: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """The labelled rows (see :func:`labelled_rows`) of ``model_version``'s predictions made from
    ``start`` to ``end``: the prices reported for a window, to add to the training data."""
    log = _predictions_of(state_dir, model_version, since=start)
    log = log[log["predicted_at"] <= pd.Timestamp(end)]
    if log.empty:
        return pd.DataFrame(columns=[*spec.feature_names, spec.target.name])
    feedback = read_feedback_log(state_dir, since=start)
    return labelled_rows(with_feedback(log, feedback, spec=spec), spec)


def _predictions_of(state_dir: Path, model_version: str, *, since: datetime | None) -> pd.DataFrame:
    log = read_prediction_log(state_dir, since=since)
    return log if log.empty else log[log["model_version"] == model_version]


def with_feedback(log: pd.DataFrame, feedback: pd.DataFrame, *, spec: DatasetSpec) -> pd.DataFrame:
    """``log`` with the reported price (the latest report per prediction id) as the target column;
    missing where no price was reported. Reports for unknown ids are ignored."""
    target = spec.target.name
    if feedback.empty:
        return log.assign(**{target: float("nan")})
    latest = (
        feedback.sort_values("received_at", kind="stable")
        .drop_duplicates("prediction_id", keep="last")
        .set_index("prediction_id")["actual"]
    )
    return log.assign(**{target: log["prediction_id"].map(latest).astype("float64")})


def labelled_rows(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """The rows of a window whose price was reported, as a training table (features + target,
    in the description's order, each record once): what a retrain adds to the data in lakeFS.
    A feature the served model's description did not have (``spec`` added it since) is missing
    in these rows, as in any older table; the data checks decide whether that may train."""
    columns = [*spec.feature_names, spec.target.name]
    labelled = frame.loc[frame[spec.target.name].notna()].reindex(columns=columns)
    return labelled.drop_duplicates().reset_index(drop=True)


def window_id(start: datetime, end: datetime, rows: int) -> str:
    """Natural key of a window: its first and last prediction times and its size."""
    first = start.astimezone(UTC).strftime(_ID_TIME)
    last = end.astimezone(UTC).strftime(_ID_TIME)
    return f"{first}--{last}--{rows}"
