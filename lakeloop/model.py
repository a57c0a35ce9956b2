"""Training and evaluation as plain functions: no Prefect, no MLflow, no I/O.

The model is an sklearn pipeline (encoder + XGBoost) so that the logged artefact accepts the raw
records the API receives, category strings included: MLflow's pyfunc passes strings as ``str``,
which XGBoost's categorical support rejects, so the encoding has to travel inside the model.

With ``TrainingSettings.dask_scheduler`` set, the regressor is fitted with ``xgboost.dask`` on that
cluster instead, and its booster is loaded into the same plain pipeline: what is logged, registered,
gated and served does not depend on where it was fitted.

Rows are split three ways by a hash of their content as ingested (:mod:`lakeloop.rowkeys`): the
holdout (judges the model and the gate), the early-stopping slice (stops boosting, and chooses among
tuning trials), and the rows fitted on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import loguniform, randint, uniform
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import ParameterSampler
from sklearn.pipeline import Pipeline
from xgboost import XGBRegressor

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

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

# Holdout membership is decided per row from a hash of its content, in thousandths.
_HASH_BUCKETS = 1000
# How long a Dask fit waits for the cluster to have a worker (an autoscaled one may start at zero).
_WORKER_WAIT_SECONDS = 60.0

# XGBoost's own defaults for the tuned hyperparameters the settings do not fix: stated, so every run
# records the same six parameters whether it was tuned or not.
_XGBOOST_DEFAULTS: dict[str, float] = {
    "min_child_weight": 1.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "reg_lambda": 1.0,
}
TUNABLE = ("max_depth", "learning_rate", *_XGBOOST_DEFAULTS)
"""The hyperparameters a tuning chooses, and a tuned champion hands on."""

# What ``--tune`` searches: ranges known to suit gradient-boosted trees on tabular data, log-uniform
# where the effect is multiplicative (rates, weights, regularisation). The number of rounds is not
# searched: early stopping chooses it for each trial.
SEARCH_SPACE: dict[str, Any] = {
    "max_depth": randint(3, 11),
    "learning_rate": loguniform(0.02, 0.3),
    "min_child_weight": loguniform(0.5, 20.0),
    "subsample": uniform(0.6, 0.4),  # scipy's uniform(loc, scale): [0.6, 1.0]
    "colsample_bytree": uniform(0.6, 0.4),
    "reg_lambda": loguniform(0.1, 20.0),
}


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


def hyperparameters(training: TrainingSettings) -> dict[str, Any]:
    """The hyperparameters an untuned training uses: the settings' depth and rate, XGBoost's
    defaults for the rest of what tuning searches."""
    return {
        "max_depth": training.max_depth,
        "learning_rate": training.learning_rate,
        **_XGBOOST_DEFAULTS,
    }


def build_pipeline(
    spec: DatasetSpec, training: TrainingSettings, params: Mapping[str, Any] | None = None
) -> Pipeline:
    """An untrained encoder + XGBoost regressor pipeline; ``params`` override the settings'
    hyperparameters (a tuning trial's)."""
    regressor = XGBRegressor(
        n_estimators=training.n_estimators,
        tree_method="hist",
        enable_categorical=True,
        random_state=training.seed,
        n_jobs=0,  # let XGBoost use every core it sees
        early_stopping_rounds=training.early_stopping_rounds,
        **(hyperparameters(training) | dict(params or {})),
    )
    return Pipeline([(ENCODE, feature_encoder(spec)), (REGRESS, regressor)])


ENCODE, REGRESS = "encode", "regress"
"""The two steps of every lakeloop pipeline; read them through :func:`parts`."""


def parts(model: Any) -> tuple[FeatureEncoder, XGBRegressor] | None:
    """The encoder and the fitted XGBoost regressor of a lakeloop pipeline; ``None`` for any
    other model (one a registry holds that lakeloop did not train)."""
    steps = getattr(model, "named_steps", {})
    encoder, regressor = steps.get(ENCODE), steps.get(REGRESS)
    if isinstance(encoder, FeatureEncoder) and isinstance(regressor, XGBRegressor):
        return encoder, regressor
    return None


def regressor_of(pipeline: Pipeline) -> XGBRegressor:
    """The XGBoost regressor of a pipeline :func:`build_pipeline` made."""
    found = parts(pipeline)
    if found is None:
        raise TypeError("not a lakeloop pipeline (an encoder, then an XGBoost regressor)")
    return found[1]


def row_buckets(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """Each row's bucket in [0, 1000): its key (:mod:`lakeloop.rowkeys`, a hash of its content as
    ingested), so the same data splits the same way on every run and every machine, whatever
    order the files were read in and whatever the description became since."""
    return rowkeys.keys(frame, spec) % _HASH_BUCKETS


def holdout_mask(frame: pd.DataFrame, spec: DatasetSpec, *, fraction: float) -> np.ndarray:
    """True for holdout rows (the lowest buckets)."""
    return row_buckets(frame, spec) < int(fraction * _HASH_BUCKETS)


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, MSE, R² and MAPE of predictions against the truth."""
    errors = predicted - actual
    mse = float(np.mean(errors**2))
    total = float(np.sum((actual - actual.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(errors))),
        "rmse": float(np.sqrt(mse)),
        "mse": mse,
        "r2": 1.0 - float(np.sum(errors**2)) / total if total > 0 else 0.0,
        "mape": float(np.mean(np.abs(errors) / np.maximum(np.abs(actual), 1e-9))),
    }


@dataclass(frozen=True)
class Split:
    """The rows of one training, three ways by content hash (see ``split_rows``)."""

    fit: pd.DataFrame
    stop: pd.DataFrame
    """The early-stopping slice: stops boosting and chooses among tuning trials."""
    holdout: pd.DataFrame
    """Judges the final model only (metrics, the gate, the champion's score)."""


def split_rows(frame: pd.DataFrame, spec: DatasetSpec, training: TrainingSettings) -> Split:
    """Split the rows with a target into fit / early-stopping / holdout rows by content hash, so
    the same data splits the same way on every run; refuse data too small or flat to learn from.

    Each part is in the order of its rows' hashes, not the order the files were read in: row
    subsampling (a tuned ``subsample``) and Dask's partitions depend on row order, and the model
    must not."""
    rows = frame.dropna(subset=[spec.target.name])
    hashes = rowkeys.keys(rows, spec)
    if spec.event_time is not None:
        split = _split_by_time(rows, hashes, spec, training)
    else:
        content_order = np.argsort(hashes, kind="stable")
        rows = rows.iloc[content_order]
        # Rows of one group (one house sold twice) share a bucket: the group's, not their own.
        units = _group_hashes(rows, spec) if spec.group else hashes[content_order]
        buckets = units % _HASH_BUCKETS
        holdout_end = int(training.holdout_fraction * _HASH_BUCKETS)
        validation_end = holdout_end + int(training.validation_fraction * _HASH_BUCKETS)
        split = Split(
            fit=rows[buckets >= validation_end],
            stop=rows[(buckets >= holdout_end) & (buckets < validation_end)],
            holdout=rows[buckets < holdout_end],
        )
    if len(split.fit) < 10 or len(split.holdout) < 2 or len(split.stop) < 2:
        raise ValueError(
            f"too few rows to train: {len(split.fit)} to fit, {len(split.stop)} for early "
            f"stopping, {len(split.holdout)} for the holdout (from {len(rows)} rows with a target)"
        )
    if rows[spec.target.name].nunique() < 2:
        raise ValueError(f"the target {spec.target.name} has a single value: nothing to learn")
    return split


def _split_by_time(
    rows: pd.DataFrame, hashes: np.ndarray, spec: DatasetSpec, training: TrainingSettings
) -> Split:
    """Dated rows split as the model is used: it learns from the past and is judged on the most
    recent rows (the holdout), early stopping on the period just before them. Rows of one time
    are ordered by their keys, so the split does not depend on the order files were read in."""
    assert spec.event_time is not None
    times = spec.event_time.parse(rows).to_numpy(dtype="datetime64[ns]")
    if spec.group:
        # A group is as recent as its latest row, and is never cut in two.
        groups = _group_hashes(rows, spec)
        latest = pd.Series(times).groupby(groups).transform("max").to_numpy()
        order = np.lexsort((hashes, groups, latest))
    else:
        groups = hashes
        order = np.lexsort((hashes, times))  # by time, then by key
    rows, groups = rows.iloc[order], groups[order]
    count = len(rows)
    holdout_start = _group_start(groups, count - int(np.ceil(training.holdout_fraction * count)))
    stop_rows = int(np.ceil(training.validation_fraction * count))
    fit_end = _group_start(groups, max(holdout_start - stop_rows, 0))
    return Split(
        fit=rows.iloc[:fit_end],
        stop=rows.iloc[fit_end:holdout_start],
        holdout=rows.iloc[holdout_start:],
    )


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
class TrainedModel:
    """A fitted pipeline with what is needed to log and judge it."""

    pipeline: Pipeline
    metrics: dict[str, float]
    train_rows: int
    holdout_rows: int
    input_example: pd.DataFrame
    holdout: pd.DataFrame
    """The holdout rows (features and target): a challenger and the champion are judged on them."""
    predicted: np.ndarray
    """This model's predictions for the holdout rows, in order."""
    params: dict[str, Any]
    """The hyperparameters it was fitted with (the settings', or the best tuning trial's)."""
    trials: tuple[Trial, ...] = ()
    """The tuning trials it was chosen from; empty when it was not tuned."""
    hyperparameters_from: str = "settings"
    """``settings``, ``tuning``, or ``champion vN`` (which handed on its tuned hyperparameters)."""


def train(
    frame: pd.DataFrame,
    spec: DatasetSpec,
    training: TrainingSettings,
    *,
    params: Mapping[str, Any] | None = None,
) -> TrainedModel:
    """Fit on the training rows and evaluate on the deterministic holdout."""
    rows = split_rows(frame, spec, training)
    chosen = hyperparameters(training) | dict(params or {})
    pipeline = fit_pipeline(rows, spec, training, params=chosen)
    return evaluate(pipeline, rows, spec, params=chosen)


def tune(frame: pd.DataFrame, spec: DatasetSpec, training: TrainingSettings) -> TrainedModel:
    """Try ``training.tune_trials`` hyperparameter sets and keep the model of the best one.

    Trials are chosen on the early-stopping slice, never on the holdout: the holdout must stay an
    unbiased judge for the gate and the champion comparison. Trial 0 is the untuned setting, so a
    tuned model is never worse than an untuned one on the slice that chooses. The rest are a
    seeded random search (scikit-learn's ``ParameterSampler``, already a dependency): with a
    dozen trials a model-guided search such as Optuna's TPE would spend its first ten on random
    samples anyway (its default ``n_startup_trials``), so it would add a dependency, and its
    import to every flow, for two guided trials. Same data and settings: same trials, same choice.
    The best trial's fitted pipeline is the final model (fitting it again would give the same).
    """
    rows = split_rows(frame, spec, training)
    candidates = [hyperparameters(training), *_sampled_params(training)]
    trials: list[Trial] = []
    best: tuple[Trial, Pipeline] | None = None
    for number, params in enumerate(candidates):
        pipeline = fit_pipeline(rows, spec, training, params=params)
        trial = Trial(
            number=number,
            params=params,
            metrics=score(pipeline, rows.stop, spec),
            rounds=kept_rounds(pipeline),
        )
        trials.append(trial)
        # Lowest RMSE (the objective early stopping watches); a tie keeps the earlier trial.
        if best is None or trial.metrics["rmse"] < best[0].metrics["rmse"]:
            best = (trial, pipeline)
    assert best is not None  # tune_trials >= 1: trial 0 always runs
    chosen, pipeline = best
    tuned = evaluate(pipeline, rows, spec, params=chosen.params, trials=tuple(trials))
    return replace(tuned, hyperparameters_from="tuning")


def kept_rounds(pipeline: Pipeline) -> int:
    """Boosting rounds the fitted model predicts with: where early stopping stopped, else all."""
    regressor = regressor_of(pipeline)
    try:
        return int(regressor.best_iteration) + 1
    except AttributeError:  # XGBoost defines best_iteration only when early stopping ran
        return int(regressor.get_booster().num_boosted_rounds())


def _sampled_params(training: TrainingSettings) -> list[dict[str, Any]]:
    """``tune_trials - 1`` seeded draws from ``SEARCH_SPACE``, as plain Python numbers (four
    significant digits: what a person reads in MLflow is what was fitted)."""
    draws = ParameterSampler(
        SEARCH_SPACE, n_iter=training.tune_trials - 1, random_state=training.seed
    )
    return [
        {
            name: int(value) if name == "max_depth" else float(f"{float(value):.4g}")
            for name, value in sorted(draw.items())
        }
        for draw in draws
    ]


def fit_pipeline(
    rows: Split,
    spec: DatasetSpec,
    training: TrainingSettings,
    *,
    params: Mapping[str, Any] | None = None,
) -> Pipeline:
    """A pipeline fitted on ``rows.fit``, early stopping on ``rows.stop``: in this process, or on
    the Dask cluster the settings name."""
    pipeline = build_pipeline(spec, training, params)
    if training.dask_scheduler is None:
        _fit_in_process(pipeline, rows.fit, rows.stop, spec)
    else:
        _fit_on_dask(pipeline, rows.fit, rows.stop, spec, scheduler=training.dask_scheduler)
    return pipeline


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
) -> TrainedModel:
    """The fitted pipeline judged on the holdout, with what logging and the gate need."""
    holdout = rows.holdout
    predicted = pipeline.predict(holdout[spec.feature_names])
    actual = holdout[spec.target.name].to_numpy()
    return TrainedModel(
        pipeline=pipeline,
        metrics=regression_metrics(actual, predicted) | {"baseline_mae": baseline_mae(rows, spec)},
        train_rows=len(rows.fit) + len(rows.stop),
        holdout_rows=len(holdout),
        input_example=holdout[spec.feature_names].head(3),
        holdout=holdout[spec.columns],
        predicted=predicted,
        params=dict(params),
        trials=trials,
    )


def _fit_in_process(
    pipeline: Pipeline, fit_rows: pd.DataFrame, stop_rows: pd.DataFrame, spec: DatasetSpec
) -> None:
    """Fit the pipeline here, early stopping on ``stop_rows``."""
    encoder = pipeline.named_steps[ENCODE]
    pipeline.fit(
        fit_rows[spec.feature_names],
        fit_rows[spec.target.name].to_numpy(),
        regress__eval_set=[
            (encoder.transform(stop_rows[spec.feature_names]), stop_rows[spec.target.name])
        ],
        regress__verbose=False,
    )


def _fit_on_dask(
    pipeline: Pipeline,
    fit_rows: pd.DataFrame,
    stop_rows: pd.DataFrame,
    spec: DatasetSpec,
    *,
    scheduler: str,
) -> None:
    """Fit the pipeline's regressor with ``xgboost.dask`` on the cluster at ``scheduler``, with the
    same hyperparameters and early stopping, then load the booster into the pipeline's own plain
    ``XGBRegressor``: the result is the same pipeline an in-process fit gives, so it logs and
    serves without Dask."""
    # Imported here: the API and in-process training never pay for importing Dask.
    from distributed import Client  # noqa: PLC0415
    from xgboost.dask import DaskXGBRegressor  # noqa: PLC0415

    encoder, regressor = pipeline.named_steps["encode"], regressor_of(pipeline)
    # Not the process-wide default client: other code here may use Dask with its own. It is made
    # current for this block only, because xgboost.dask looks the client up even when given one.
    with Client(scheduler, set_as_default=False) as client, client.as_current():
        client.wait_for_workers(1, timeout=_WORKER_WAIT_SECONDS)
        fit_features, fit_target = _scatter_encoded(client, fit_rows, spec, encoder=encoder)
        stop_features, stop_target = _scatter_encoded(client, stop_rows, spec, encoder=encoder)
        dask_regressor = DaskXGBRegressor(**regressor.get_params())
        dask_regressor.client = client
        dask_regressor.fit(
            fit_features, fit_target, eval_set=[(stop_features, stop_target)], verbose=False
        )
        booster = dask_regressor.get_booster()
    # The booster carries best_iteration, so predict() stops where early stopping did.
    regressor.load_model(bytearray(booster.save_raw("ubj")))


def _scatter_encoded(
    client: Client, rows: pd.DataFrame, spec: DatasetSpec, *, encoder: FeatureEncoder
) -> tuple[dd.DataFrame, dd.Series]:
    """Encode ``rows`` here and send one contiguous chunk to each worker, as a Dask DataFrame of
    the features (categoricals with their fixed categories) and a Series of the target.

    Encoding here means the workers need only pandas and XGBoost, not lakeloop. ``rows`` come in
    content order (``split_rows``), so the partitions (and so the model) do not depend on the
    order the files were read in. Chunks are placed explicitly because the scheduler may put
    every partition of a small graph on one worker.
    """
    import dask.dataframe as dd  # noqa: PLC0415 - see _fit_on_dask

    encoded = encoder.transform(rows[spec.feature_names]).assign(
        **{spec.target.name: rows[spec.target.name].to_numpy()}
    )
    encoded = encoded.reset_index(drop=True)
    workers = sorted(client.nthreads())
    bounds = np.linspace(0, len(encoded), num=len(workers) + 1).astype(int)
    chunks = [
        client.scatter(encoded.iloc[start:end], workers=[worker], hash=False)
        for worker, start, end in zip(workers, bounds[:-1], bounds[1:], strict=True)
        if end > start
    ]
    frame = dd.from_delayed(chunks, meta=encoded.iloc[:0], verify_meta=False)
    return frame[spec.feature_names], frame[spec.target.name]


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


def gate_failures(
    metrics: dict[str, float],
    training: TrainingSettings,
    *,
    bars: Thresholds,
    champion: dict[str, float] | None = None,
    champion_name: str = "the champion",
) -> list[str]:
    """Reasons a new model must not be promoted; empty when it may. It must clearly beat always
    predicting the median (when the metrics carry that baseline), meet the thresholds ``bars``
    (see :func:`thresholds`) and, when there is a champion, be no worse than it (within the
    tolerance) on the same holdout."""
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
    return reasons
