"""Training and evaluation as plain functions: no Prefect, no MLflow, no I/O.

The model is an sklearn pipeline, the dataset's encoder and then the model kind's regressor
(:mod:`lakeloop.trainer`; XGBoost), so that the logged artefact accepts the raw records the API
receives, category strings included: MLflow's pyfunc passes strings as ``str``, which XGBoost's
categorical support rejects, so the encoding has to travel inside the model. This module is the
one place that knows how that pipeline is composed: everything else reaches its parts through
:func:`encoder_of`, :func:`regressor_of` and :func:`fast_path`.

Rows are split three ways by a hash of their content as ingested (:mod:`lakeloop.rowkeys`): the
holdout (judges the model and the gate), the early-stopping slice (stops boosting, and chooses among
tuning trials), and the rows fitted on. When the data holds folded feedback (prices production
reported, which may be wrong), the rows that predate it also make a clean holdout, which the gate
judges on too: see :func:`split_rows`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import ParameterSampler
from sklearn.pipeline import Pipeline

from lakeloop import rowkeys
from lakeloop.dataset import (
    DatasetSpec,
    Thresholds,
    codes_as_text,
    in_units,
    integer_codes_as_text,
    is_integer_code,
)
from lakeloop.settings import TrainingSettings
from lakeloop.trainer import (
    EncodedRows,
    EncodedSplit,
    FitFacts,
    MatrixModel,
    Regressor,
    Trainer,
    XGBoostTrainer,
)

# Holdout membership is decided per row from a hash of its content, in thousandths.
_HASH_BUCKETS = 1000

TRAINER: Trainer = XGBoostTrainer()
"""The model kind lakeloop trains, and whose fitted models the API serves on its fast path: the
one place to select another (:class:`lakeloop.trainer.Trainer`)."""
TUNABLE = TRAINER.tunable
"""The hyperparameters a tuning chooses, and a tuned champion hands on."""

# The steps of every lakeloop pipeline. They are the stored format: versions already registered in
# MLflow carry these names, so they never change, and no other module reads them.
_ENCODE, _REGRESS = "encode", "regress"


class FeatureEncoder(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Select the described features in order and give categoricals their fixed categories.

    Unknown category strings become missing values, which XGBoost routes like any other missing
    value, so a new neighbourhood name degrades a prediction instead of failing it.
    """

    def __init__(
        self,
        numeric: tuple[str, ...] = (),
        categories: tuple[tuple[str, tuple[str, ...]], ...] = (),
    ) -> None:
        self.numeric = numeric
        self.categories = categories

    def fit(self, frame: pd.DataFrame, target: Any = None) -> FeatureEncoder:
        return self

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        encoded = {name: pd.to_numeric(frame[name], errors="coerce") for name in self.numeric}
        for name, known in self.categories:
            # Integer codes stored as numbers or padded text (60, 60.0, "060") match their
            # listed digits ("60").
            if known and all(map(is_integer_code, known)):
                text = integer_codes_as_text(frame[name]).astype("string")
            else:
                text = codes_as_text(frame[name]).astype("string")
            encoded[name] = pd.Categorical(text, categories=list(known))
        return pd.DataFrame(encoded, index=frame.index)


def feature_encoder(spec: DatasetSpec) -> FeatureEncoder:
    return FeatureEncoder(
        numeric=tuple(spec.numeric_features),
        categories=tuple(
            (name, spec.feature(name).categories) for name in spec.categorical_features
        ),
    )


def encoder_of(pipeline: Pipeline) -> FeatureEncoder:
    """The dataset's encoder of a lakeloop pipeline (the features as the regressor sees them)."""
    return _parts_of(pipeline)[0]


def regressor_of(pipeline: Pipeline) -> Any:
    """The fitted regressor of a lakeloop pipeline: the model kind's (an ``XGBRegressor``)."""
    return _parts_of(pipeline)[1]


def fast_path(model: Any) -> tuple[FeatureEncoder, MatrixModel] | None:
    """The encoder and the model kind's matrix predictor of a lakeloop pipeline, for the API's
    fast path; ``None`` for any other model (one a registry holds that lakeloop did not train,
    or whose regressor is not of the selected kind), which is served through its ``predict``."""
    found = _parts(model)
    if found is None:
        return None
    encoder, regressor = found
    matrix_model = TRAINER.matrix_model(regressor)
    return None if matrix_model is None else (encoder, matrix_model)


def stored_types(trainer: Trainer = TRAINER) -> list[str]:
    """The types a stored lakeloop pipeline holds besides scikit-learn's (the encoder, the model
    kind's), which skops is told to trust when it loads one."""
    return [f"{FeatureEncoder.__module__}.{FeatureEncoder.__qualname__}", *trainer.stored_types]


def composed(encoder: FeatureEncoder, regressor: Regressor) -> Pipeline:
    """The pipeline that is logged, registered and served: the encoder, then the regressor."""
    return Pipeline([(_ENCODE, encoder), (_REGRESS, regressor)])


def _parts(model: Any) -> tuple[FeatureEncoder, Any] | None:
    """The encoder and the regressor of a lakeloop pipeline (what :func:`composed` made, now or
    before it was stored); ``None`` for any other model."""
    steps = getattr(model, "named_steps", {})
    encoder = steps.get(_ENCODE)
    if isinstance(encoder, FeatureEncoder) and _REGRESS in steps:
        return encoder, steps[_REGRESS]
    return None


def _parts_of(pipeline: Pipeline) -> tuple[FeatureEncoder, Any]:
    found = _parts(pipeline)
    if found is None:
        raise TypeError("not a lakeloop pipeline (the dataset's encoder, then a regressor)")
    return found


def row_buckets(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """Each row's bucket in [0, 1000): its key (:mod:`lakeloop.rowkeys`, a hash of its content as
    ingested), so the same data splits the same way on every run and every machine, whatever
    order the files were read in and whatever the description became since."""
    return rowkeys.keys(frame, spec) % _HASH_BUCKETS


def holdout_mask(frame: pd.DataFrame, spec: DatasetSpec, *, fraction: float) -> np.ndarray:
    """True for holdout rows (the lowest buckets)."""
    return row_buckets(frame, spec) < int(fraction * _HASH_BUCKETS)


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, MSE, R² and MAPE of predictions against the truth, and the median of
    log(actual / predicted) when every value is positive (the model's typical bias as a factor:
    the reference a window of reported values is compared with, monitoring.labels)."""
    errors = predicted - actual
    mse = float(np.mean(errors**2))
    total = float(np.sum((actual - actual.mean()) ** 2))
    metrics = {
        "mae": float(np.mean(np.abs(errors))),
        "rmse": float(np.sqrt(mse)),
        "mse": mse,
        "r2": 1.0 - float(np.sum(errors**2)) / total if total > 0 else 0.0,
        "mape": float(np.mean(np.abs(errors) / np.maximum(np.abs(actual), 1e-9))),
    }
    bias = median_log_ratio(actual, predicted)
    if bias is not None:
        metrics[MEDIAN_LOG_RATIO] = bias
    return metrics


MEDIAN_LOG_RATIO = "median_log_ratio"


def median_log_ratio(actual: np.ndarray, predicted: np.ndarray) -> float | None:
    """Median of log(actual / predicted); ``None`` when a value is not positive (a ratio means
    nothing there) or there is none."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    if not len(actual) or (actual <= 0).any() or (predicted <= 0).any():
        return None
    return float(np.median(np.log(actual / predicted)))


@dataclass(frozen=True)
class Split:
    """The rows of one training, three ways by content hash (see ``split_rows``)."""

    fit: pd.DataFrame
    stop: pd.DataFrame
    """The early-stopping slice: stops boosting and chooses among tuning trials."""
    holdout: pd.DataFrame
    """Judges the final model only (metrics, the gate, the champion's score)."""
    clean_holdout: pd.DataFrame | None = None
    """When the data holds folded feedback: the holdout of the rows that predate it (the clean
    rows split alone by the same rule), which no model here fits or stops on. A poisoned feedback
    table shapes the holdout it is part of; it cannot shape this one. ``None`` without feedback."""
    set_aside_rows: int = 0
    """Rows of the clean holdout that are neither fitted on nor in the holdout (the time split's
    most recent clean rows, when feedback is newer): every row is fit, stop, holdout or this."""


def split_rows(
    frame: pd.DataFrame,
    spec: DatasetSpec,
    training: TrainingSettings,
    *,
    feedback: np.ndarray | None = None,
) -> Split:
    """Split the rows with a target into fit / early-stopping / holdout rows by content hash (or
    by time, for a description with an event time), so the same data splits the same way on every
    run; refuse data too small or flat to learn from.

    ``feedback`` marks the rows of ``frame`` that came from folded feedback tables
    (:func:`lakeloop.datagate.is_feedback_table`). When any is marked, the other (clean) rows are
    split alone by the same rule, and their holdout (``clean_holdout``) is kept out of fit and
    early stopping: with the hash split those rows are already in the holdout, so nothing moves;
    with the time split the most recent clean rows may leave fit. Without feedback, the split is
    exactly the one made without the argument.

    Each part is in the order of its rows' hashes, not the order the files were read in: row
    subsampling (a tuned ``subsample``) and Dask's partitions depend on row order, and the model
    must not.

    The split is made in two steps, so that a cluster makes it the same way one partition at a
    time (:mod:`lakeloop.cluster`): :func:`split_plan` learns what placing a row needs to know
    about all of them (nothing for a hash split; for a time split, where the rows in time order
    are cut), then :func:`place_rows` places each row."""
    rows, marked = with_target(frame, spec, feedback)
    plan = split_plan(plan_keys(rows, spec, marked), spec, training)
    placed = place_rows(rows, spec, training, plan, marked)
    clean_holdout = rows.iloc[placed.held] if placed.held is not None else None
    split = Split(
        fit=rows.iloc[placed.fit],
        stop=rows.iloc[placed.stop],
        holdout=rows.iloc[placed.holdout],
        # Fewer than two rows make no score: the gate then judges on the holdout alone.
        clean_holdout=clean_holdout
        if clean_holdout is not None and len(clean_holdout) >= 2
        else None,
        set_aside_rows=placed.set_aside,
    )
    check_split(
        fit=len(split.fit),
        stop=len(split.stop),
        holdout=len(split.holdout),
        rows=len(rows),
        distinct_targets=min(rows[spec.target.name].nunique(), 2),
        spec=spec,
    )
    return split


def with_target(
    frame: pd.DataFrame, spec: DatasetSpec, feedback: np.ndarray | None = None
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The rows with a target (the only ones a split places), and which of them are feedback."""
    has_target = frame[spec.target.name].notna().to_numpy()
    marked = None if feedback is None else np.asarray(feedback, dtype=bool)[has_target]
    return frame[has_target], marked


def check_split(
    *, fit: int, stop: int, holdout: int, rows: int, distinct_targets: int, spec: DatasetSpec
) -> None:
    """Refuse a split too small or flat to learn from (counts of rows; ``distinct_targets``
    counts the target's distinct values up to two)."""
    if fit < 10 or holdout < 2 or stop < 2:
        raise ValueError(
            f"too few rows to train: {fit} to fit, {stop} for early stopping, {holdout} for the "
            f"holdout (from {rows} rows with a target)"
        )
    if distinct_targets < 2:
        raise ValueError(f"the target {spec.target.name} has a single value: nothing to learn")


TimeKey = tuple[int, int, int]
"""Where a row stands in a time split's order: its (group's latest) time in nanoseconds (missing
times last), its group's hash, its own key."""


@dataclass(frozen=True)
class TimeCuts:
    """Where a time split cuts the rows in time order, as the first key of each later part."""

    latest: pd.Series | None
    """For a description with a group: each group's latest time (ns, missing the smallest
    integer), by the group's hash; a group is as recent as its latest row."""
    stop: TimeKey | None
    """The first key of the early-stopping rows (the fit rows come before it); ``None`` when the
    rows end first."""
    holdout: TimeKey | None
    """The first key of the holdout rows; ``None`` when the rows end first."""


@dataclass(frozen=True)
class SplitPlan:
    """What placing a row needs to know about all the rows: nothing for a hash split (a row's
    place is its own key's); for a time split, where the rows in time order are cut, for all the
    rows and for the clean ones alone (the rows not from feedback tables, when there are some)."""

    cuts: TimeCuts | None = None
    clean_cuts: TimeCuts | None = None


@dataclass(frozen=True)
class Placed:
    """Positions of the rows of one frame in each part of a split, each in split order."""

    fit: np.ndarray
    stop: np.ndarray
    holdout: np.ndarray
    held: np.ndarray | None
    """The clean rows' holdout (when feedback is marked), kept out of fit and early stopping."""
    set_aside: int
    """Rows of ``held`` that are not in ``holdout``."""


_NAT = np.iinfo(np.int64).min  # how numpy stores a missing datetime64 as an integer


def plan_keys(
    rows: pd.DataFrame, spec: DatasetSpec, marked: np.ndarray | None = None
) -> pd.DataFrame | None:
    """What :func:`split_plan` reads of each row (with a target): for a time split its time (ns),
    group hash, key and whether it is clean; ``None`` for a hash split, which needs no plan."""
    if spec.event_time is None:
        return None
    hashes = rowkeys.keys(rows, spec)
    times = spec.event_time.parse(rows).to_numpy(dtype="datetime64[ns]").view(np.int64)
    return pd.DataFrame(
        {
            "time": times,
            "group": _group_hashes(rows, spec) if spec.group else hashes,
            "key": hashes,
            "clean": np.ones(len(rows), dtype=bool) if marked is None else ~marked,
        }
    )


def split_plan(
    keys: pd.DataFrame | None, spec: DatasetSpec, training: TrainingSettings
) -> SplitPlan:
    """The plan of a split from every row's :func:`plan_keys` (of one frame, or of every
    partition's concatenated)."""
    if keys is None:
        return SplitPlan()
    clean = keys[keys["clean"].to_numpy()]
    return SplitPlan(
        cuts=_time_cuts(keys, spec, training),
        clean_cuts=_time_cuts(clean, spec, training) if len(clean) < len(keys) else None,
    )


def _time_cuts(keys: pd.DataFrame, spec: DatasetSpec, training: TrainingSettings) -> TimeCuts:
    """Dated rows split as the model is used: it learns from the past and is judged on the most
    recent rows (the holdout), early stopping on the period just before them. Rows of one time
    are ordered by their keys, so the split does not depend on the order files were read in; a
    group is never cut in two."""
    latest = keys.groupby("group")["time"].max() if spec.group else None  # a missing time is least
    times, groups, hashes = _order_keys(keys, latest)
    order = np.lexsort((hashes, groups, times))
    ordered = groups[order]
    count = len(keys)
    holdout_start = _group_start(ordered, count - int(np.ceil(training.holdout_fraction * count)))
    stop_rows = int(np.ceil(training.validation_fraction * count))
    fit_end = _group_start(ordered, max(holdout_start - stop_rows, 0))

    def key_at(position: int) -> TimeKey | None:
        if position >= count:
            return None
        row = order[position]
        return int(times[row]), int(groups[row]), int(hashes[row])

    return TimeCuts(latest=latest, stop=key_at(fit_end), holdout=key_at(holdout_start))


def _order_keys(
    keys: pd.DataFrame, latest: pd.Series | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's :data:`TimeKey` as three arrays: times (its group's latest, when grouped; a
    missing time after every other, as numpy sorts it), groups, keys."""
    groups = keys["group"].to_numpy(dtype=np.uint64)
    times = keys["time"].to_numpy(dtype=np.int64)
    if latest is not None:
        times = latest.reindex(groups).to_numpy(dtype=np.int64)
    times = np.where(times == _NAT, np.iinfo(np.int64).max, times)
    return times, groups, keys["key"].to_numpy(dtype=np.uint64)


def place_rows(
    rows: pd.DataFrame,
    spec: DatasetSpec,
    training: TrainingSettings,
    plan: SplitPlan,
    marked: np.ndarray | None = None,
) -> Placed:
    """Each row's part (of rows with a target, all of them or one partition's: a row's place
    depends only on itself and the plan). With feedback ``marked``, the clean rows are placed
    alone as well, and their holdout leaves fit and early stopping."""
    keys = plan_keys(rows, spec, marked)
    hashes = rowkeys.keys(rows, spec)
    fit, stop, holdout = _positions(rows, hashes, spec, training, keys=keys, cuts=plan.cuts)
    held = None
    set_aside = 0
    if marked is not None and marked.any():
        clean = np.flatnonzero(~marked)
        clean_keys = None if keys is None else keys.iloc[clean]
        found = _positions(
            rows.iloc[clean], hashes[clean], spec, training, keys=clean_keys, cuts=plan.clean_cuts
        )
        held = clean[found[2]]
        fit, stop = fit[~np.isin(fit, held)], stop[~np.isin(stop, held)]
        set_aside = int((~np.isin(held, holdout)).sum())
    return Placed(fit=fit, stop=stop, holdout=holdout, held=held, set_aside=set_aside)


def _positions(
    rows: pd.DataFrame,
    hashes: np.ndarray,
    spec: DatasetSpec,
    training: TrainingSettings,
    *,
    keys: pd.DataFrame | None,
    cuts: TimeCuts | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positions in ``rows`` of the fit, early-stopping and holdout rows, each in split order:
    by time for a description with an event time (where ``cuts`` say), else by content hash."""
    if keys is not None:
        assert cuts is not None
        return _split_by_time(keys, cuts)
    content_order = np.argsort(hashes, kind="stable")
    # Rows of one group (one house sold twice) share a bucket: the group's, not their own.
    units = _group_hashes(rows.iloc[content_order], spec) if spec.group else hashes[content_order]
    buckets = units % _HASH_BUCKETS
    holdout_end = int(training.holdout_fraction * _HASH_BUCKETS)
    validation_end = holdout_end + int(training.validation_fraction * _HASH_BUCKETS)
    return (
        content_order[buckets >= validation_end],
        content_order[(buckets >= holdout_end) & (buckets < validation_end)],
        content_order[buckets < holdout_end],
    )


def _split_by_time(keys: pd.DataFrame, cuts: TimeCuts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows in time order, cut where ``cuts`` say (see :func:`_time_cuts`)."""
    times, groups, hashes = _order_keys(keys, cuts.latest)
    order = np.lexsort((hashes, groups, times))
    in_holdout = _from(times, groups, hashes, cuts.holdout)[order]
    from_stop = _from(times, groups, hashes, cuts.stop)[order]
    return order[~from_stop], order[from_stop & ~in_holdout], order[in_holdout]


def _from(
    times: np.ndarray, groups: np.ndarray, hashes: np.ndarray, cut: TimeKey | None
) -> np.ndarray:
    """True for the rows whose key comes at or after ``cut`` (none when it is ``None``)."""
    if cut is None:
        return np.zeros(len(times), dtype=bool)
    time, group, key = cut
    same_time, group_id = times == time, np.uint64(group)
    later_in_time = (groups > group_id) | ((groups == group_id) & (hashes >= np.uint64(key)))
    return np.asarray((times > time) | (same_time & later_in_time), dtype=bool)


def _group_hashes(rows: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """Each row's group as a 64-bit hash of its ``group`` column's value."""
    assert spec.group is not None
    return np.asarray(pd.util.hash_pandas_object(rows[spec.group], index=False))


def _group_start(groups: np.ndarray, position: int) -> int:
    """``position`` moved back to where its group starts (rows of a group are adjacent)."""
    while 0 < position < len(groups) and groups[position - 1] == groups[position]:
        position -= 1
    return position


@dataclass(frozen=True)
class Trial:
    """One tuning candidate, fitted on the fit rows and scored on the early-stopping slice."""

    number: int
    params: dict[str, Any]
    metrics: dict[str, float]
    """Scores on the early-stopping slice (never the holdout)."""
    rounds: int
    """Boosting rounds early stopping kept."""


@dataclass(frozen=True)
class ClusterHoldout:
    """A holdout the workers of a Dask cluster keep (:mod:`lakeloop.cluster`): this process holds
    its size, columns, content digest, a bounded sample and its per-segment scores, never its
    rows. Whatever needs the rows (the champion's score) runs on the cluster through ``run``."""

    rows: int
    columns: pd.DataFrame
    """No rows: the holdout's columns and their types."""
    digest: str
    """The rows' content identity (:func:`lakeloop.registry.frame_digest`, taken on a worker)."""
    sample: pd.DataFrame
    """At most :data:`SAMPLE_ROWS` rows' target and prediction (column ``predicted``), for the
    plots."""
    segment_metrics: dict[str, float]
    """MAE and RMSE per segment (:func:`lakeloop.evaluation.segment_metrics`, on a worker)."""
    run: Callable[[Callable[[pd.DataFrame], Any]], Any]
    """Calls a function of the holdout's rows on the worker that keeps them; returns its result."""

    def __len__(self) -> int:
        return self.rows


SAMPLE_ROWS = 5000
"""Rows of a cluster's holdout this process receives for the plots."""

Holdout: TypeAlias = pd.DataFrame | ClusterHoldout
"""A holdout's rows: in this process, or kept on a Dask cluster."""


@dataclass(frozen=True)
class TrainedModel:
    """A fitted pipeline with what is needed to log and judge it."""

    pipeline: Pipeline
    metrics: dict[str, float]
    train_rows: int
    holdout_rows: int
    input_example: pd.DataFrame
    holdout: Holdout
    """The holdout rows (features and target): a challenger and the champion are judged on them
    (kept on the cluster when it trained there)."""
    predicted: np.ndarray
    """This model's predictions for the holdout rows, in order (none when the holdout is kept
    on a cluster: its ``sample`` has some)."""
    params: dict[str, Any]
    """The hyperparameters it was fitted with (the settings', or the best tuning trial's)."""
    facts: FitFacts
    """What its regressor says about itself: rounds kept, feature importances."""
    trials: tuple[Trial, ...] = ()
    """The tuning trials it was chosen from; empty when it was not tuned."""
    hyperparameters_from: str = "settings"
    """``settings``, ``tuning``, or ``champion vN`` (which handed on its tuned hyperparameters)."""
    clean_holdout: Holdout | None = None
    """The holdout of the rows that predate the folded feedback (see ``Split.clean_holdout``):
    the gate judges a challenger and the champion on it too. ``None`` without feedback."""
    clean_metrics: dict[str, float] | None = None
    """This model's metrics on ``clean_holdout``."""
    set_aside_rows: int = 0
    """Rows neither trained on nor in the holdout (``Split.set_aside_rows``)."""


def train(
    frame: pd.DataFrame,
    spec: DatasetSpec,
    training: TrainingSettings,
    *,
    params: Mapping[str, Any] | None = None,
    feedback: np.ndarray | None = None,
    trainer: Trainer = TRAINER,
) -> TrainedModel:
    """Fit on the training rows and evaluate on the deterministic holdout (and, when
    ``feedback`` marks rows of folded feedback tables, on the holdout of the rows that predate
    them: see :func:`split_rows`)."""
    rows = split_rows(frame, spec, training, feedback=feedback)
    chosen = trainer.hyperparameters(training) | dict(params or {})
    pipeline = fit_pipeline(rows, spec, training, params=chosen, trainer=trainer)
    return evaluate(pipeline, rows, spec, params=chosen, trainer=trainer)


def tune(
    frame: pd.DataFrame,
    spec: DatasetSpec,
    training: TrainingSettings,
    *,
    feedback: np.ndarray | None = None,
    trainer: Trainer = TRAINER,
) -> TrainedModel:
    """Try ``training.tune_trials`` hyperparameter sets and keep the model of the best one.

    Trials are chosen on the early-stopping slice, never on the holdout: the holdout must stay an
    unbiased judge for the gate and the champion comparison. Trial 0 is the untuned setting, so a
    tuned model is never worse than an untuned one on the slice that chooses. The rest are a
    seeded random search (scikit-learn's ``ParameterSampler``, already a dependency): with a
    dozen trials a model-guided search such as Optuna's TPE would spend its first ten on random
    samples anyway (its default ``n_startup_trials``), so it would add a dependency, and its
    import to every flow, for two guided trials. Same data and settings: same trials, same choice.
    The best trial's fitted pipeline is the final model (fitting it again would give the same).
    ``feedback`` marks rows of folded feedback tables, as for :func:`train`.
    """
    rows = split_rows(frame, spec, training, feedback=feedback)
    trials, chosen, pipeline = search(
        training,
        fit=lambda params: fit_pipeline(rows, spec, training, params=params, trainer=trainer),
        score_stop=lambda pipeline: score(pipeline, rows.stop, spec),
        trainer=trainer,
    )
    tuned = evaluate(pipeline, rows, spec, params=chosen.params, trials=trials, trainer=trainer)
    return replace(tuned, hyperparameters_from="tuning")


def search(
    training: TrainingSettings,
    *,
    fit: Callable[[dict[str, Any]], Pipeline],
    score_stop: Callable[[Pipeline], dict[str, float]],
    trainer: Trainer = TRAINER,
) -> tuple[tuple[Trial, ...], Trial, Pipeline]:
    """The trials of a tuning (see :func:`tune`), each fitted by ``fit`` and scored on the
    early-stopping slice by ``score_stop`` (in this process or on a cluster), and the best one
    with its pipeline."""
    candidates = [trainer.hyperparameters(training), *_sampled_params(training, trainer)]
    trials: list[Trial] = []
    best: tuple[Trial, Pipeline] | None = None
    for number, params in enumerate(candidates):
        pipeline = fit(params)
        trial = Trial(
            number=number,
            params=params,
            metrics=score_stop(pipeline),
            rounds=trainer.describe(regressor_of(pipeline)).rounds,
        )
        trials.append(trial)
        # Lowest RMSE (the objective early stopping watches); a tie keeps the earlier trial.
        if best is None or trial.metrics["rmse"] < best[0].metrics["rmse"]:
            best = (trial, pipeline)
    assert best is not None  # tune_trials >= 1: trial 0 always runs
    return tuple(trials), best[0], best[1]


def _sampled_params(training: TrainingSettings, trainer: Trainer) -> list[dict[str, Any]]:
    """``tune_trials - 1`` seeded draws from the trainer's search space, as plain Python numbers
    (four significant digits: what a person reads in MLflow is what was fitted)."""
    draws = ParameterSampler(
        trainer.search_space, n_iter=training.tune_trials - 1, random_state=training.seed
    )
    return [
        {
            name: value if isinstance(value, int) else float(f"{value:.4g}")
            for name, value in sorted(trainer.typed(draw).items())
        }
        for draw in draws
    ]


def fit_pipeline(
    rows: Split,
    spec: DatasetSpec,
    training: TrainingSettings,
    *,
    params: Mapping[str, Any] | None = None,
    trainer: Trainer = TRAINER,
) -> Pipeline:
    """A pipeline fitted on ``rows.fit``, early stopping on ``rows.stop`` (in this process, or on
    the Dask cluster the settings name): the dataset's encoder, then the trainer's regressor."""
    encoder = feature_encoder(spec)
    encoded = EncodedSplit(
        fit=_encoded(rows.fit, spec, encoder=encoder),
        stop=_encoded(rows.stop, spec, encoder=encoder),
    )
    regressor = trainer.fit(
        encoded, training, trainer.hyperparameters(training) | dict(params or {})
    )
    return composed(encoder, regressor)


def _encoded(rows: pd.DataFrame, spec: DatasetSpec, *, encoder: FeatureEncoder) -> EncodedRows:
    return EncodedRows(
        features=encoder.transform(rows[spec.feature_names]),
        target=rows[spec.target.name].to_numpy(),
    )


def baseline_mae(rows: Split, spec: DatasetSpec) -> float:
    """The floor every model must clear: the holdout MAE of always predicting the median of the
    rows it learned from (the constant with the lowest absolute error, MAE being the gate's first
    measure)."""
    median = float(np.median(pd.concat([rows.fit, rows.stop])[spec.target.name]))
    return float(np.mean(np.abs(rows.holdout[spec.target.name].to_numpy() - median)))


def evaluate(
    pipeline: Pipeline,
    rows: Split,
    spec: DatasetSpec,
    *,
    params: Mapping[str, Any],
    trials: tuple[Trial, ...] = (),
    trainer: Trainer = TRAINER,
) -> TrainedModel:
    """The fitted pipeline judged on the holdout (and the clean holdout, when there is one), with
    what logging and the gate need."""
    holdout = rows.holdout
    predicted = pipeline.predict(holdout[spec.feature_names])
    actual = holdout[spec.target.name].to_numpy()
    clean = rows.clean_holdout
    return TrainedModel(
        pipeline=pipeline,
        metrics=regression_metrics(actual, predicted) | {"baseline_mae": baseline_mae(rows, spec)},
        train_rows=len(rows.fit) + len(rows.stop),
        holdout_rows=len(holdout),
        input_example=holdout[spec.feature_names].head(3),
        holdout=holdout[spec.columns],
        predicted=predicted,
        params=dict(params),
        facts=trainer.describe(regressor_of(pipeline)),
        trials=trials,
        clean_holdout=None if clean is None else clean[spec.columns],
        clean_metrics=None if clean is None else score(pipeline, clean, spec),
        set_aside_rows=rows.set_aside_rows,
    )


def score(model: Any, holdout: pd.DataFrame, spec: DatasetSpec) -> dict[str, float]:
    """Metrics of any fitted model on a holdout (used to score the champion on new data)."""
    predicted = np.asarray(model.predict(holdout[spec.feature_names]), dtype=float)
    return regression_metrics(holdout[spec.target.name].to_numpy(), predicted)


def thresholds(spec: DatasetSpec, training: TrainingSettings) -> Thresholds:
    """The description's thresholds, with the deployment's overrides from the settings."""
    overrides = {
        name: value
        for name in ("max_mae", "max_rmse")
        if (value := getattr(training, name)) is not None
    }
    return spec.target.thresholds.model_copy(update=overrides)


@dataclass(frozen=True)
class CleanScores:
    """A challenger trained on folded feedback and the champion, both scored on the holdout of
    the rows that predate the feedback (``Split.clean_holdout``)."""

    rows: int
    challenger: dict[str, float]
    champion: dict[str, float]


def clean_scores(
    clean_holdout: pd.DataFrame | None,
    challenger: dict[str, float] | None,
    champion: dict[str, float] | None,
) -> CleanScores | None:
    """Both models' metrics on a clean holdout, for the gate; ``None`` when there is none (the
    data holds no feedback) or no champion to compare with."""
    if clean_holdout is None or challenger is None or champion is None:
        return None
    return CleanScores(rows=len(clean_holdout), challenger=challenger, champion=champion)


def gate_failures(
    metrics: dict[str, float],
    training: TrainingSettings,
    *,
    bars: Thresholds,
    champion: dict[str, float] | None = None,
    champion_name: str = "the champion",
    clean: CleanScores | None = None,
) -> list[str]:
    """Reasons a new model must not be promoted; empty when it may. It must clearly beat always
    predicting the median (when the metrics carry that baseline), meet the thresholds ``bars``
    (see :func:`thresholds`) and, when there is a champion, be no worse than it (within the
    tolerance) on the same holdout, and, when it learned from folded feedback (``clean``), on the
    rows that predate the feedback too: feedback shapes the holdout it is part of, so prices
    reported wrong (poisoned, or a bug upstream) would otherwise carry a worse model through."""
    reasons = []
    if "baseline_mae" in metrics:
        allowed = metrics["baseline_mae"] * (1 - training.baseline_margin)
        if metrics["mae"] > allowed:
            reasons.append(
                f"MAE {in_units(metrics['mae'])} is not at least {training.baseline_margin:.0%} "
                f"below {in_units(metrics['baseline_mae'])}, the MAE of always predicting the "
                "training median: the model has not learned enough from the features"
            )
    for name, limit, worse in (
        ("mae", bars.max_mae, float.__gt__),
        ("rmse", bars.max_rmse, float.__gt__),
        ("mape", bars.max_mape, float.__gt__),
        ("r2", bars.min_r2, float.__lt__),
    ):
        if limit is not None and worse(float(metrics[name]), float(limit)):
            sign = ">" if name != "r2" else "<"
            reasons.append(
                f"{name.upper()} {in_units(metrics[name])} {sign} threshold {in_units(limit)}"
            )
    if champion is not None:
        allowed = 1.0 + training.champion_tolerance
        for name in ("mae", "rmse"):
            if metrics[name] > champion[name] * allowed:
                reasons.append(
                    f"{name.upper()} {in_units(metrics[name])} worse than {champion_name}'s "
                    f"{in_units(champion[name])} on the same holdout "
                    f"(tolerance {training.champion_tolerance:.0%})"
                )
    if clean is not None:
        reasons += _clean_failures(clean, training, champion_name=champion_name)
    return reasons


def _clean_failures(
    clean: CleanScores, training: TrainingSettings, *, champion_name: str
) -> list[str]:
    """The challenger must be no worse than the champion (within ``champion_tolerance``) on the
    rows that predate the feedback it learned from."""
    allowed = 1.0 + training.champion_tolerance
    return [
        f"on the {clean.rows} rows that predate the feedback, {name.upper()} "
        f"{in_units(clean.challenger[name])} is worse than {champion_name}'s "
        f"{in_units(clean.champion[name])} (tolerance {training.champion_tolerance:.0%}): "
        "the folded feedback made the model worse on the data it had before"
        for name in ("mae", "rmse")
        if clean.challenger[name] > clean.champion[name] * allowed
    ]
