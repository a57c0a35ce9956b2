"""The model kind behind a small protocol, and XGBoost its one implementation.

A :class:`Trainer` fits a regressor on features already encoded (the dataset's encoder,
:func:`lakeloop.model.feature_encoder`, stays in front of it), says which hyperparameters it has,
and describes what it fitted: the rounds it predicts with, its feature importances, and a plain
matrix predictor for the API's fast path. :mod:`lakeloop.model` puts the encoder and the
regressor together into the sklearn pipeline that is logged, registered and served; nothing else
knows which kind of regressor is inside. Everything XGBoost-specific lives in this module.

With ``TrainingSettings.dask_scheduler`` set, :class:`XGBoostTrainer` fits with ``xgboost.dask``
on that cluster instead, and loads the booster into the same plain ``XGBRegressor``: what is
logged, registered, gated and served does not depend on where it was fitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
from scipy.stats import loguniform, randint, uniform
from xgboost import Booster, XGBRegressor

from lakeloop.settings import TrainingSettings

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client


@dataclass(frozen=True)
class EncodedRows:
    """Rows as a regressor learns from them: the encoder's output and the target."""

    features: pd.DataFrame
    """One column per feature, in the encoder's order; categoricals as pandas categoricals with
    their fixed categories, unknown values missing."""
    target: np.ndarray


@dataclass(frozen=True)
class FitFacts:
    """What a fitted regressor says about itself."""

    rounds: int
    """Rounds it predicts with: where early stopping stopped, else all it fitted."""
    importances: dict[str, float]
    """Each feature's importance; a feature it never used may be absent."""
    importance_measure: str
    """What the importances measure, as a plot's axis names it (``total gain``)."""


class EncodedSplit(NamedTuple):
    """What a regressor is fitted on: the rows it learns from and the rows its early stopping
    watches, both encoded."""

    fit: EncodedRows
    stop: EncodedRows


class ClusterSplit(NamedTuple):
    """Encoded rows as a Dask cluster's workers hold them: the features (one column per feature,
    as :class:`EncodedRows` has them) and the target, for the fit and for early stopping."""

    fit_features: dd.DataFrame
    fit_target: dd.Series
    stop_features: dd.DataFrame
    stop_target: dd.Series


class Regressor(Protocol):
    """A fitted regressor: the last step of a lakeloop pipeline, stored and served with it, so a
    scikit-learn estimator (``get_params``, ``fit``) that skops can save."""

    def predict(self, features: pd.DataFrame, /) -> Any: ...


class MatrixModel(Protocol):
    """A fitted regressor reduced to the API's fast path: a float32 matrix in, predictions out.

    Columns are in ``feature_names`` order; a categorical feature is its category's position in
    the encoder's list of categories (the pandas code), a missing or unknown value NaN."""

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    def predict(self, matrix: np.ndarray, /) -> np.ndarray: ...


class Trainer(Protocol):
    """A model kind: its hyperparameters, how it fits, and what it says about a fitted regressor.

    To add one, implement this and select it in :data:`lakeloop.model.TRAINER`."""

    @property
    def tunable(self) -> tuple[str, ...]:
        """The hyperparameters a tuning chooses, every run logs, and a tuned champion hands on."""
        ...

    @property
    def search_space(self) -> Mapping[str, Any]:
        """What a tuning samples each tunable hyperparameter from (scipy distributions or lists,
        as scikit-learn's ``ParameterSampler`` takes them)."""
        ...

    @property
    def stored_types(self) -> tuple[str, ...]:
        """Qualified names of the types a stored regressor holds (skops loads only those)."""
        ...

    @property
    def packages(self) -> tuple[str, ...]:
        """Distributions a stored regressor needs to load, pinned in the model's requirements."""
        ...

    def hyperparameters(self, training: TrainingSettings) -> dict[str, Any]:
        """The tunable hyperparameters an untuned training uses."""
        ...

    def typed(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The tunable hyperparameters among ``values`` as the kind takes them (integers where it
        needs integers, floats elsewhere): from a sampler's numbers or the strings MLflow logged."""
        ...

    def fit(
        self, rows: EncodedSplit, training: TrainingSettings, params: Mapping[str, Any]
    ) -> Regressor:
        """A regressor fitted on ``rows.fit`` with the hyperparameters ``params`` (over the
        settings'), early stopping on ``rows.stop``."""
        ...

    def fit_on_cluster(
        self,
        client: Client,
        rows: ClusterSplit,
        training: TrainingSettings,
        params: Mapping[str, Any],
    ) -> Regressor:
        """A regressor fitted on a Dask cluster from encoded rows its workers hold, early
        stopping on ``rows.stop``: the same kind of regressor :meth:`fit` returns, which this
        process stores and serves without Dask."""
        ...

    def describe(self, regressor: Regressor) -> FitFacts:
        """The rounds a regressor of this kind predicts with and its feature importances."""
        ...

    def matrix_model(self, regressor: Regressor) -> MatrixModel | None:
        """The fast path's predictor; ``None`` for a regressor of another kind."""
        ...


# XGBoost's own defaults for the tuned hyperparameters the settings do not fix: stated, so every run
# records the same six parameters whether it was tuned or not.
_XGBOOST_DEFAULTS: dict[str, float] = {
    "min_child_weight": 1.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "reg_lambda": 1.0,
}
_INTEGER_PARAMS = frozenset({"max_depth"})

# What ``--tune`` searches: ranges known to suit gradient-boosted trees on tabular data, log-uniform
# where the effect is multiplicative (rates, weights, regularisation). The number of rounds is not
# searched: early stopping chooses it for each trial.
_SEARCH_SPACE: dict[str, Any] = {
    "max_depth": randint(3, 11),
    "learning_rate": loguniform(0.02, 0.3),
    "min_child_weight": loguniform(0.5, 20.0),
    "subsample": uniform(0.6, 0.4),  # scipy's uniform(loc, scale): [0.6, 1.0]
    "colsample_bytree": uniform(0.6, 0.4),
    "reg_lambda": loguniform(0.1, 20.0),
}

# How long a Dask fit waits for the cluster to have a worker (an autoscaled one may start at zero).
_WORKER_WAIT_SECONDS = 60.0
# The target's column in the frame a Dask fit scatters (beside the features, never one of them).
_TARGET_COLUMN = "__lakeloop_target__"


class XGBoostTrainer:
    """Gradient-boosted trees with XGBoost's ``hist`` method and native categorical support."""

    tunable: tuple[str, ...] = ("max_depth", "learning_rate", *_XGBOOST_DEFAULTS)
    search_space: Mapping[str, Any] = _SEARCH_SPACE
    stored_types: tuple[str, ...] = ("xgboost.core.Booster", "xgboost.sklearn.XGBRegressor")
    packages: tuple[str, ...] = ("xgboost",)

    def hyperparameters(self, training: TrainingSettings) -> dict[str, Any]:
        """The settings' depth and rate, XGBoost's defaults for the rest of what tuning searches."""
        return {
            "max_depth": training.max_depth,
            "learning_rate": training.learning_rate,
            **_XGBOOST_DEFAULTS,
        }

    def typed(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The tunable hyperparameters among ``values``: the depth an integer, the rest floats."""
        return {
            name: int(float(values[name])) if name in _INTEGER_PARAMS else float(values[name])
            for name in self.tunable
            if name in values
        }

    def fit(
        self, rows: EncodedSplit, training: TrainingSettings, params: Mapping[str, Any]
    ) -> XGBRegressor:
        """An ``XGBRegressor`` fitted in this process, or on the Dask cluster the settings name
        (the rows scattered to it from here)."""
        regressor = self._regressor(training, params)
        if training.dask_scheduler is None:
            regressor.fit(
                rows.fit.features,
                rows.fit.target,
                eval_set=[(rows.stop.features, rows.stop.target)],
                verbose=False,
            )
        else:
            _fit_on_dask(regressor, rows, scheduler=training.dask_scheduler)
        return regressor

    def fit_on_cluster(
        self,
        client: Client,
        rows: ClusterSplit,
        training: TrainingSettings,
        params: Mapping[str, Any],
    ) -> XGBRegressor:
        """An ``XGBRegressor`` fitted with ``xgboost.dask`` on rows the workers hold."""
        regressor = self._regressor(training, params)
        _fit_frames(client, regressor, rows)
        return regressor

    def _regressor(self, training: TrainingSettings, params: Mapping[str, Any]) -> XGBRegressor:
        return XGBRegressor(
            n_estimators=training.n_estimators,
            tree_method="hist",
            enable_categorical=True,
            random_state=training.seed,
            n_jobs=0,  # let XGBoost use every core it sees
            early_stopping_rounds=training.early_stopping_rounds,
            **(self.hyperparameters(training) | dict(params)),
        )

    def describe(self, regressor: Regressor) -> FitFacts:
        """Rounds to the best iteration when early stopping ran; importance as total gain."""
        fitted = _xgboost(regressor)
        booster = fitted.get_booster()
        gains = booster.get_score(importance_type="gain")
        return FitFacts(
            rounds=_rounds_kept(fitted),
            # One number per feature for a single target (a list only for multi-output models).
            importances={
                name: float(value) for name, value in gains.items() if not isinstance(value, list)
            },
            importance_measure="total gain",
        )

    def matrix_model(self, regressor: Regressor) -> MatrixModel | None:
        """The booster with its feature order and kept rounds (``Booster.inplace_predict``)."""
        if not isinstance(regressor, XGBRegressor):
            return None
        booster = regressor.get_booster()
        return BoosterMatrix(
            booster=booster,
            feature_names=tuple(booster.feature_names or ()),
            iteration_range=(0, _rounds_kept(regressor)),
        )


@dataclass(frozen=True)
class BoosterMatrix:
    """An XGBoost booster as the fast path calls it: no pandas, no sklearn wrapper."""

    booster: Booster
    feature_names: tuple[str, ...]
    iteration_range: tuple[int, int]
    """The rounds the sklearn wrapper predicts with (to the best iteration)."""

    def predict(self, matrix: np.ndarray, /) -> np.ndarray:
        """Predictions for each row of an encoded float32 matrix."""
        return np.asarray(
            self.booster.inplace_predict(matrix, iteration_range=self.iteration_range),
            dtype=np.float64,
        )


def _xgboost(regressor: Regressor) -> XGBRegressor:
    if not isinstance(regressor, XGBRegressor):
        raise TypeError(f"not an XGBoost regressor: {type(regressor).__name__}")
    return regressor


def _rounds_kept(regressor: XGBRegressor) -> int:
    """Boosting rounds the fitted model predicts with: where early stopping stopped, else all."""
    try:
        return int(regressor.best_iteration) + 1
    except AttributeError:  # XGBoost defines best_iteration only when early stopping ran
        return int(regressor.get_booster().num_boosted_rounds())


def _fit_on_dask(regressor: XGBRegressor, rows: EncodedSplit, *, scheduler: str) -> None:
    """Fit with ``xgboost.dask`` on the cluster at ``scheduler``, with ``regressor``'s
    hyperparameters and early stopping, then load the booster into ``regressor``: the result is
    the plain ``XGBRegressor`` an in-process fit gives, so it logs and serves without Dask."""
    # Imported here: the API and in-process training never pay for importing Dask.
    from distributed import Client  # noqa: PLC0415

    with Client(scheduler, set_as_default=False) as client:
        client.wait_for_workers(1, timeout=_WORKER_WAIT_SECONDS)
        fit_features, fit_target = _scatter(client, rows.fit)
        stop_features, stop_target = _scatter(client, rows.stop)
        _fit_frames(
            client, regressor, ClusterSplit(fit_features, fit_target, stop_features, stop_target)
        )


def _fit_frames(client: Client, regressor: XGBRegressor, rows: ClusterSplit) -> None:
    """Fit with ``xgboost.dask`` on the cluster's rows, with ``regressor``'s hyperparameters and
    early stopping, then load the booster into ``regressor``."""
    from xgboost.dask import DaskXGBRegressor  # noqa: PLC0415 - see _fit_on_dask

    # Made current for this block only, because xgboost.dask looks the client up even when
    # given one; not the process-wide default: other code here may use Dask with its own.
    with client.as_current():
        dask_regressor = DaskXGBRegressor(**regressor.get_params())
        dask_regressor.client = client
        dask_regressor.fit(
            rows.fit_features,
            rows.fit_target,
            eval_set=[(rows.stop_features, rows.stop_target)],
            verbose=False,
        )
        booster = dask_regressor.get_booster()
    # The booster carries best_iteration, so predict() stops where early stopping did.
    regressor.load_model(bytearray(booster.save_raw("ubj")))


def _scatter(client: Client, rows: EncodedRows) -> tuple[dd.DataFrame, dd.Series]:
    """Send one contiguous chunk of encoded ``rows`` to each worker, as a Dask DataFrame of the
    features (categoricals with their fixed categories) and a Series of the target.

    Rows are encoded before they leave, so the workers need only pandas and XGBoost, not
    lakeloop. They come in content order (``model.split_rows``), so the partitions (and so the
    model) do not depend on the order the files were read in. Chunks are placed explicitly
    because the scheduler may put every partition of a small graph on one worker.
    """
    import dask.dataframe as dd  # noqa: PLC0415 - see _fit_on_dask

    features = list(rows.features.columns)
    encoded = rows.features.assign(**{_TARGET_COLUMN: rows.target}).reset_index(drop=True)
    workers = sorted(client.nthreads())
    bounds = np.linspace(0, len(encoded), num=len(workers) + 1).astype(int)
    chunks = [
        client.scatter(encoded.iloc[start:end], workers=[worker], hash=False)
        for worker, start, end in zip(workers, bounds[:-1], bounds[1:], strict=True)
        if end > start
    ]
    frame = dd.from_delayed(chunks, meta=encoded.iloc[:0], verify_meta=False)
    return frame[features], frame[_TARGET_COLUMN]
