"""Training and evaluation as plain functions: no Prefect, no MLflow, no I/O.

The model is an sklearn pipeline (encoder + XGBoost) so that the logged artefact accepts the raw
records the API receives, category strings included: MLflow's pyfunc passes strings as ``str``,
which XGBoost's categorical support rejects, so the encoding has to travel inside the model.

With ``TrainingSettings.dask_scheduler`` set, the regressor is fitted with ``xgboost.dask`` on that
cluster instead, and its booster is loaded into the same plain pipeline: what is logged, registered,
gated and served does not depend on where it was fitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline
from xgboost import XGBRegressor

from lakeloop.dataset import DatasetSpec
from lakeloop.settings import TrainingSettings

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

# Holdout membership is decided per row from a hash of its content, in thousandths.
_HASH_BUCKETS = 1000
# How long a Dask fit waits for the cluster to have a worker (an autoscaled one may start at zero).
_WORKER_WAIT_SECONDS = 60.0


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
            encoded[name] = pd.Categorical(frame[name].astype("string"), categories=list(known))
        return pd.DataFrame(encoded, index=frame.index)


def feature_encoder(spec: DatasetSpec) -> FeatureEncoder:
    return FeatureEncoder(
        numeric=tuple(spec.numeric_features),
        categories=tuple(
            (name, spec.feature(name).categories) for name in spec.categorical_features
        ),
    )


def build_pipeline(spec: DatasetSpec, training: TrainingSettings) -> Pipeline:
    """An untrained encoder + XGBoost regressor pipeline."""
    regressor = XGBRegressor(
        n_estimators=training.n_estimators,
        max_depth=training.max_depth,
        learning_rate=training.learning_rate,
        tree_method="hist",
        enable_categorical=True,
        random_state=training.seed,
        n_jobs=0,  # let XGBoost use every core it sees
        early_stopping_rounds=training.early_stopping_rounds,
    )
    return Pipeline([("encode", feature_encoder(spec)), ("regress", regressor)])


def row_buckets(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """Each row's bucket in [0, 1000): a hash of its content, so the same data splits the same way
    on every run and every machine, whatever order the files were read in."""
    return _row_hashes(frame, spec) % _HASH_BUCKETS


def _row_hashes(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """A 64-bit hash of each row's content (index ignored)."""
    return pd.util.hash_pandas_object(frame[spec.columns], index=False).to_numpy()


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


def train(frame: pd.DataFrame, spec: DatasetSpec, training: TrainingSettings) -> TrainedModel:
    """Fit on the training rows and evaluate on the deterministic holdout."""
    rows = frame.dropna(subset=[spec.target.name])
    buckets = row_buckets(rows, spec)
    holdout_end = int(training.holdout_fraction * _HASH_BUCKETS)
    validation_end = holdout_end + int(training.validation_fraction * _HASH_BUCKETS)
    test_rows = rows[buckets < holdout_end]
    # Early stopping watches its own slice of the training data, never the holdout.
    stop_rows = rows[(buckets >= holdout_end) & (buckets < validation_end)]
    fit_rows = rows[buckets >= validation_end]
    if len(fit_rows) < 10 or len(test_rows) < 2 or len(stop_rows) < 2:
        raise ValueError(
            f"too few rows to train: {len(fit_rows)} to fit, {len(stop_rows)} for early stopping, "
            f"{len(test_rows)} for the holdout (from {len(rows)} rows with a target)"
        )
    if rows[spec.target.name].nunique() < 2:
        raise ValueError(f"the target {spec.target.name} has a single value: nothing to learn")
    pipeline = build_pipeline(spec, training)
    if training.dask_scheduler is None:
        _fit_in_process(pipeline, fit_rows, stop_rows, spec)
    else:
        _fit_on_dask(pipeline, fit_rows, stop_rows, spec, scheduler=training.dask_scheduler)
    predicted = pipeline.predict(test_rows[spec.feature_names])
    return TrainedModel(
        pipeline=pipeline,
        metrics=regression_metrics(test_rows[spec.target.name].to_numpy(), predicted),
        train_rows=len(fit_rows) + len(stop_rows),
        holdout_rows=len(test_rows),
        input_example=test_rows[spec.feature_names].head(3),
        holdout=test_rows[spec.columns],
        predicted=predicted,
    )


def _fit_in_process(
    pipeline: Pipeline, fit_rows: pd.DataFrame, stop_rows: pd.DataFrame, spec: DatasetSpec
) -> None:
    """Fit the pipeline here, early stopping on ``stop_rows``."""
    encoder = pipeline.named_steps["encode"]
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

    encoder, regressor = pipeline.named_steps["encode"], pipeline.named_steps["regress"]
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

    Encoding here means the workers need only pandas and XGBoost, not lakeloop. Rows are put in
    the order of their content hash first, so the partitions (and so the model) do not depend on
    the order the files were read in. Chunks are placed explicitly because the scheduler may put
    every partition of a small graph on one worker.
    """
    import dask.dataframe as dd  # noqa: PLC0415 - see _fit_on_dask

    content_order = np.argsort(_row_hashes(rows, spec), kind="stable")
    ordered = rows.iloc[content_order]
    encoded = encoder.transform(ordered[spec.feature_names]).assign(
        **{spec.target.name: ordered[spec.target.name].to_numpy()}
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


def gate_failures(
    metrics: dict[str, float],
    training: TrainingSettings,
    *,
    champion: dict[str, float] | None = None,
    champion_name: str = "the champion",
) -> list[str]:
    """Reasons a new model must not be promoted; empty when it may. It must meet the absolute
    thresholds and, when there is a champion, be no worse than it (within the tolerance) on the
    same holdout."""
    reasons = []
    if metrics["mae"] > training.max_mae:
        reasons.append(f"MAE {metrics['mae']:,.0f} > threshold {training.max_mae:,.0f}")
    if metrics["rmse"] > training.max_rmse:
        reasons.append(f"RMSE {metrics['rmse']:,.0f} > threshold {training.max_rmse:,.0f}")
    if champion is not None:
        allowed = 1.0 + training.champion_tolerance
        for name in ("mae", "rmse"):
            if metrics[name] > champion[name] * allowed:
                reasons.append(
                    f"{name.upper()} {metrics[name]:,.0f} worse than {champion_name}'s "
                    f"{champion[name]:,.0f} on the same holdout "
                    f"(tolerance {training.champion_tolerance:.0%})"
                )
    return reasons
