"""Parse: turn Evidently 0.7's result (``Snapshot.dict()``) into typed numbers.

Pure functions over plain dicts, so they are tested on trimmed real outputs without running
Evidently. Evidently 0.7 reports each column's drift as a bare score with its method and
threshold; whether a score means drift depends on the method (a p-value drifts when *below* the
threshold, a distance when *at or above* it), which :data:`P_VALUE_METHODS` records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import msgspec

# Display names of Evidently's tests whose score is a p-value (evidently/legacy/calculations/
# stattests/*.py, ``display_name``); every other built-in method is a distance or divergence.
P_VALUE_METHODS = frozenset(
    {
        "K-S p_value",
        "chi-square p_value",
        "Z-test p_value",
        "Anderson-Darling",
        "Cramer-von Mises",
        "Epps-Singleton",
        "Fisher's Exact test",
        "g_test",
        "Mann-Whitney U-rank test",
        "t_test",
        "empirical_mmd",
        "Total-Variation-Distance",
    }
)
DISTANCE_METHODS = frozenset(
    {
        "Wasserstein distance (normed)",
        "Jensen-Shannon distance",
        "Hellinger distance",
        "Kullback-Leibler divergence",
        "PSI",
        "Energy-distance",
        "Percentile text content drift",
        "Absolute text content drift",
    }
)


class ParseError(ValueError):
    """The Evidently result does not have the shape this module reads."""


class MetricEntry(TypedDict):
    """One entry of a result's ``metrics`` list (Evidently's ``MetricResult.to_dict()``)."""

    id: str
    metric_name: str
    config: dict[str, Any]
    """The metric's parameters as Evidently keeps them: ``type`` always, then per metric
    ``column``, ``method``, ``threshold``, ``drift_share``... (values of several types)."""
    value: Any
    """A number (``ValueDrift``, ``RMSE``) or a dict of numbers (``DriftedColumnsCount``:
    ``count``/``share``; ``MAE``: ``mean``/``std``), as the metric decides."""


class ColumnDrift(msgspec.Struct, frozen=True, kw_only=True):
    """One column's drift test as Evidently ran it."""

    score: float
    """The test's score: a p-value or a distance, as ``method`` says."""
    method: str
    """Evidently's display name of the test (``K-S p_value``, ``Wasserstein distance (normed)``)."""
    threshold: float
    drifted: bool


class DriftSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The numbers of one data-drift run."""

    drift_share: float
    """Share of features Evidently found drifted (0..1)."""
    drifted_features: list[str]
    per_feature: dict[str, ColumnDrift]
    prediction: ColumnDrift | None
    """Drift of the prediction column; ``None`` when the reference had no predictions."""
    dataset_drift: bool
    """Evidently's own verdict (drift share >= the report's ``drift_share``)."""
    rows_current: int
    rows_reference: int

    @property
    def prediction_drift(self) -> float | None:
        """The prediction column's drift score, if it was tested."""
        return None if self.prediction is None else self.prediction.score


class QualitySummary(msgspec.Struct, frozen=True, kw_only=True):
    """Regression quality on the window's rows whose actual value arrived."""

    mae: float
    rmse: float
    rows: int


def is_drift(*, score: float, method: str, threshold: float) -> bool:
    """Whether ``score`` of Evidently test ``method`` means drift at ``threshold``."""
    if method in P_VALUE_METHODS:
        return score < threshold
    if method in DISTANCE_METHODS:
        return score >= threshold
    # A custom or new method: guessing its direction could silently invert every decision.
    raise ParseError(f"unknown Evidently drift method {method!r}: add it to monitoring.parse")


def parse_drift(
    result: Mapping[str, object],
    *,
    features: Sequence[str],
    rows_current: int,
    rows_reference: int,
    prediction_column: str | None = "prediction",
) -> DriftSummary:
    """Read a data-drift result (``Snapshot.dict()`` of :func:`monitoring.drift.run_drift`).

    ``features`` are the description's feature names: the columns counted in the drift share.
    """
    metrics = _metrics(result)
    count = _only(metrics, "DriftedColumnsCount")
    columns = {
        metric["config"]["column"]: _column_drift(metric)
        for metric in metrics
        if _kind(metric) == "ValueDrift"
    }
    missing = [name for name in features if name not in columns]
    if missing:
        raise ParseError(f"no drift result for features: {', '.join(missing)}")
    per_feature = {name: columns[name] for name in features}
    drifted = [name for name, column in per_feature.items() if column.drifted]
    share = float(count["value"]["share"])
    # Evidently counts drifted columns itself; disagreeing with it means the method table above
    # is wrong for this Evidently version, which must not pass silently.
    if len(drifted) != round(float(count["value"]["count"])):
        raise ParseError(
            f"Evidently counts {count['value']['count']:.0f} drifted features, "
            f"the per-column scores give {len(drifted)} ({', '.join(drifted) or 'none'})"
        )
    return DriftSummary(
        drift_share=share,
        drifted_features=drifted,
        per_feature=per_feature,
        prediction=columns.get(prediction_column) if prediction_column else None,
        dataset_drift=share >= float(count["config"].get("drift_share", 0.5)),
        rows_current=rows_current,
        rows_reference=rows_reference,
    )


def parse_quality(result: Mapping[str, object], *, rows: int) -> QualitySummary:
    """Read a regression-quality result (``Snapshot.dict()`` of
    :func:`monitoring.drift.run_quality`)."""
    metrics = _metrics(result)
    mae = _only(metrics, "MAE")["value"]
    rmse = _only(metrics, "RMSE")["value"]
    # MAE is reported as the mean and std of absolute errors; RMSE as a bare number.
    return QualitySummary(
        mae=float(mae["mean"] if isinstance(mae, Mapping) else mae),
        rmse=float(rmse),
        rows=rows,
    )


def _metrics(result: Mapping[str, object]) -> list[MetricEntry]:
    metrics = result.get("metrics")
    if not isinstance(metrics, list):
        raise ParseError("an Evidently result has a 'metrics' list")
    return metrics


def _kind(metric: MetricEntry) -> str:
    # config.type reads "evidently:metric_v2:ValueDrift"; the class name is the last part.
    return str(metric.get("config", {}).get("type", "")).rsplit(":", 1)[-1]


def _only(metrics: list[MetricEntry], kind: str) -> MetricEntry:
    found = [metric for metric in metrics if _kind(metric) == kind]
    if len(found) != 1:
        raise ParseError(f"expected one {kind} metric in the Evidently result, found {len(found)}")
    return found[0]


def _column_drift(metric: MetricEntry) -> ColumnDrift:
    config = metric["config"]
    try:
        score, method, threshold = float(metric["value"]), config["method"], config["threshold"]
    except (KeyError, TypeError, ValueError) as error:
        raise ParseError(f"malformed ValueDrift result for {config.get('column')!r}") from error
    return ColumnDrift(
        score=score,
        method=method,
        threshold=float(threshold),
        drifted=is_drift(score=score, method=method, threshold=float(threshold)),
    )
