"""Select: the window of live predictions a monitor run looks at, with the prices reported since.

The window is the champion's own predictions only (a window mixing two models would blame the new
one for the old one's traffic), the most recent ``rows`` of them, optionally only those since a
time. Feedback is joined on the prediction id; its price lands in the target's column, so the same
frame feeds Evidently's drift (features, prediction) and quality (target vs prediction) checks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import pandas as pd

from lakeloop.dataset import DatasetSpec
from lakeloop.stores.objects import ObjectStore
from lakeloop.stores.prediction_log import (
    read_feedback_log,
    read_prediction_log,
    record_keys,
)
from monitoring.history import Window

_ID_TIME = "%Y%m%dT%H%M%S.%fZ"


def champion_window(
    store: ObjectStore,
    spec: DatasetSpec,
    *,
    model_version: str,
    rows: int,
    since: datetime | None = None,
    by_event_time: bool = False,
) -> tuple[pd.DataFrame, Window]:
    """The most recent ``rows`` predictions of ``model_version`` (at or after ``since``) with any
    reported price in the target column, oldest first, and the window that names them.

    With ``by_event_time`` (a description with an ``event_time``), "most recent" and ``since``
    are by when each record happened, as the request sent it (a sale's month), and by when it
    was predicted where it sent none: predictions made today for last year's sales are checked
    as last year's. The whole log is read then (segment names only know prediction times)."""
    dated = by_event_time and spec.event_time is not None
    log = _predictions_of(store, model_version, since=None if dated else since)
    if dated and not log.empty:
        log = _by_event_time(log, spec, since=since)
    log = log.tail(rows).reset_index(drop=True)
    if log.empty:
        return log, Window(id=f"v{model_version}/empty", rows=0)
    start = log["predicted_at"].min().to_pydatetime()
    end = log["predicted_at"].max().to_pydatetime()
    frame = with_feedback(log, read_feedback_log(store, since=start), spec=spec)
    window = Window(id=window_id(start, end, len(frame)), start=start, end=end, rows=len(frame))
    return frame, window


def _by_event_time(log: pd.DataFrame, spec: DatasetSpec, *, since: datetime | None) -> pd.DataFrame:
    """``log`` ordered by each record's event time (its prediction time where it sent none),
    from ``since`` on."""
    assert spec.event_time is not None
    columns = spec.event_time.columns
    happened = spec.event_time.parse(log) if all(c in log for c in columns) else pd.Series(pd.NaT)
    when = happened.reindex(log.index).fillna(log["predicted_at"])
    order = when.sort_values(kind="stable").index
    log, when = log.loc[order], when.loc[order]
    if since is not None:
        log = log[when >= pd.Timestamp(since).tz_convert(UTC)]
    return log


def window_feedback(
    store: ObjectStore, spec: DatasetSpec, *, model_version: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """The labelled rows (see :func:`labelled_rows`) of ``model_version``'s predictions made from
    ``start`` to ``end``: the prices reported for a window, to add to the training data."""
    reports = window_reports(store, spec, model_version=model_version, start=start, end=end)
    if reports.empty:
        return pd.DataFrame(columns=[*spec.feature_names, spec.target.name])
    return labelled_rows(reports, spec)


def window_reports(
    store: ObjectStore, spec: DatasetSpec, *, model_version: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """``model_version``'s predictions made from ``start`` to ``end`` that have a reported value
    (the target column), with their prediction, when and by whom it was reported
    (:data:`REPORTED_AT`, :data:`REPORTED_BY`). Empty when none."""
    log = _predictions_of(store, model_version, since=start)
    if log.empty:
        return log
    log = log[log["predicted_at"] <= pd.Timestamp(end)]
    joined = with_feedback(log, read_feedback_log(store, since=start), spec=spec)
    return joined.loc[joined[spec.target.name].notna()].reset_index(drop=True)


def _predictions_of(
    store: ObjectStore, model_version: str, *, since: datetime | None
) -> pd.DataFrame:
    log = read_prediction_log(store, since=since)
    return log if log.empty else log[log["model_version"] == model_version]


REPORTED_AT = "reported_at"
"""Column :func:`with_feedback` adds: when the price of a row was reported."""
REPORTED_BY = "reported_by"
"""Column :func:`with_feedback` adds: the client that reported it (missing in logs older than
client tokens)."""


def with_feedback(log: pd.DataFrame, feedback: pd.DataFrame, *, spec: DatasetSpec) -> pd.DataFrame:
    """``log`` with the reported price as the target column (missing where none was reported)
    and when it was reported (:data:`REPORTED_AT`). A report names a prediction id or the
    record's own ids; the latest report by prediction id wins, then the latest by ids (it prices
    every logged prediction of that record), and :data:`REPORTED_BY` names its client. Reports
    for unknown ids are ignored."""
    target = spec.target.name
    actual = pd.Series(float("nan"), index=log.index)
    reported = pd.Series(pd.NaT, index=log.index, dtype="datetime64[us, UTC]")
    client = pd.Series(None, index=log.index, dtype=object)
    if not feedback.empty:
        feedback = feedback.sort_values("received_at", kind="stable")
        if "client" not in feedback:
            feedback = feedback.assign(client=None)
        for keys, named in _feedback_keys(log, feedback, spec):
            latest = named.drop_duplicates("key", keep="last").set_index("key")
            missing = actual.isna()
            actual = actual.where(~missing, keys.map(latest["actual"]))
            reported = reported.where(~missing, keys.map(latest["received_at"]))
            client = client.where(~missing, keys.map(latest["client"]))
    return log.assign(
        **{target: actual.astype("float64"), REPORTED_AT: reported, REPORTED_BY: client}
    )


def _feedback_keys(
    log: pd.DataFrame, feedback: pd.DataFrame, spec: DatasetSpec
) -> Iterator[tuple[pd.Series, pd.DataFrame]]:
    """Pairs of (each logged row's key, the reports by that key): prediction ids first, then
    the record keys of each combination of id columns a report can name."""
    by_id = feedback[feedback["prediction_id"].notna()]
    yield log["prediction_id"], by_id.assign(key=by_id["prediction_id"])
    if "record_key" not in feedback or not spec.ids:
        return
    by_record = feedback[feedback["record_key"].notna()]
    if by_record.empty:
        return
    by_record = by_record.assign(key=by_record["record_key"])
    for size in range(1, len(spec.ids) + 1):
        for names in itertools.combinations(sorted(spec.ids), size):
            if all(name in log for name in names):
                yield record_keys(log, names), by_record


def labelled_rows(
    frame: pd.DataFrame, spec: DatasetSpec, *, keep: Sequence[str] = ()
) -> pd.DataFrame:
    """The rows of a window whose price was reported, as a table stored under ``spec`` (every
    stored column, each record once): what a retrain adds to the data in lakeFS. Ids are as the
    requests sent them (missing where they sent none); the event time likewise, else the time
    the price was reported (a sale is dated when its price becomes known); ignored columns are
    empty. A feature the served model's description did not have (``spec`` added it since) is
    missing in these rows, as in any older table; the data checks decide whether that may
    train. Columns of ``frame`` named in ``keep`` follow the stored ones (the first report of
    a record keeps its own)."""
    labelled = frame.loc[frame[spec.target.name].notna()]
    rows = labelled.reindex(columns=[*spec.stored_columns, *keep])
    if spec.event_time is not None and REPORTED_AT in labelled:
        undated = rows[spec.event_time.columns].isna().all(axis=1)
        if undated.any():
            dated = spec.event_time.written(labelled.loc[undated, REPORTED_AT])
            for column, values in dated.items():
                rows[column] = rows[column].astype(object)
                rows.loc[undated, column] = values.astype(object)
    for column in spec.context_columns:  # logged as text: numbers again where they all are
        numbers = pd.to_numeric(rows[column], errors="coerce")
        if numbers.notna().sum() == rows[column].notna().sum():
            whole = numbers.dropna()
            rows[column] = numbers.astype("Int64") if (whole == whole.round()).all() else numbers
    return rows.drop_duplicates(subset=spec.stored_columns).reset_index(drop=True)


def window_id(start: datetime, end: datetime, rows: int) -> str:
    """Natural key of a window: its first and last prediction times and its size."""
    first = start.astimezone(UTC).strftime(_ID_TIME)
    last = end.astimezone(UTC).strftime(_ID_TIME)
    return f"{first}--{last}--{rows}"
