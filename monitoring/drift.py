"""Compute: run Evidently on a window of predictions against the champion's reference data.

Every column comes from the dataset description, so a team's own table needs no change here.
The functions return the Evidently snapshot untouched (with the row counts Evidently's result
does not carry); :mod:`monitoring.parse` turns it into numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import pandas as pd
from evidently import DataDefinition, Dataset, Regression, Report
from evidently.core.container import MetricContainer
from evidently.core.metric_types import Metric
from evidently.core.report import Snapshot
from evidently.metrics import MAE, RMSE, RowCount, ValueDrift
from evidently.presets import DataDriftPreset

from lakeloop.dataset import DatasetSpec

EVIDENTLY_DRIFT_SHARE = 0.5
"""Evidently's own dataset-drift threshold (the share of drifted features it calls drift)."""


@dataclass(frozen=True)
class EvidentlyRun:
    """One Evidently run: its snapshot plus the window sizes its result does not record."""

    snapshot: Snapshot
    rows_current: int
    rows_reference: int

    @cached_property
    def result(self) -> dict[str, object]:
        """The snapshot in its dict form, the input of :mod:`monitoring.parse`."""
        # Evidently's own annotation is a bare ``dict``: a "metrics" and a "tests" list.
        snapshot: dict[str, object] = self.snapshot.dict()
        return snapshot


def data_definition(spec: DatasetSpec, *, extra_numeric: tuple[str, ...] = ()) -> DataDefinition:
    """Evidently's column mapping, read from the dataset description (never guessed from dtypes:
    a categorical column stored as integers would otherwise be tested as a number)."""
    return DataDefinition(
        numerical_columns=[*spec.numeric_features, *extra_numeric],
        categorical_columns=list(spec.categorical_features),
    )


def run_drift(
    *,
    current: pd.DataFrame,
    reference: pd.DataFrame,
    spec: DatasetSpec,
    prediction_column: str | None = "prediction",
    drift_share: float = EVIDENTLY_DRIFT_SHARE,
) -> EvidentlyRun:
    """Data drift of every feature and overall, plus prediction drift when both frames hold
    ``prediction_column``. ``drift_share`` only sets the share Evidently's report calls dataset
    drift; the retrain decision uses its own threshold (:class:`lakeloop.settings.DriftPolicy`)."""
    with_prediction = (
        prediction_column is not None
        and prediction_column in current.columns
        and prediction_column in reference.columns
    )
    extra = (prediction_column,) if with_prediction and prediction_column else ()
    # Only the described columns go in: the prediction log also carries ids, timestamps and the
    # model version, which must neither be tested nor counted in the drift share.
    columns = [*spec.feature_names, *extra]
    definition = data_definition(spec, extra_numeric=extra)
    metrics: list[Metric | MetricContainer] = [
        RowCount(),
        DataDriftPreset(columns=spec.feature_names, drift_share=drift_share),
    ]
    metrics += [ValueDrift(column=name) for name in extra]
    snapshot = Report(metrics).run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    return EvidentlyRun(snapshot=snapshot, rows_current=len(current), rows_reference=len(reference))


def run_quality(
    *,
    current_with_actuals: pd.DataFrame,
    spec: DatasetSpec,
    prediction_column: str = "prediction",
    target: str | None = None,
) -> EvidentlyRun:
    """Regression quality (MAE, RMSE) of the predictions whose actual price has arrived.

    ``target`` defaults to the description's target; rows without an actual are left out, since
    feedback arrives for some sales only.
    """
    target = target or spec.target.name
    scored = current_with_actuals.dropna(subset=[target, prediction_column])
    definition = DataDefinition(
        numerical_columns=[prediction_column, target],
        regression=[Regression(target=target, prediction=prediction_column)],
    )
    snapshot = Report([RowCount(), MAE(), RMSE()]).run(
        current_data=Dataset.from_pandas(
            scored[[prediction_column, target]], data_definition=definition
        ),
        reference_data=None,
    )
    return EvidentlyRun(snapshot=snapshot, rows_current=len(scored), rows_reference=0)
