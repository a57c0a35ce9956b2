"""The model kind's seam: XGBoost behind the ``Trainer`` protocol, the stored format kept, and a
second kind (a hand-written fake) trained, described and served without touching other code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyRegressor

from api.predictor import MatrixKernel, Predictor
from lakeloop import evaluation, model
from lakeloop.dataset import DatasetSpec
from lakeloop.settings import TrainingSettings
from lakeloop.trainer import EncodedSplit, FitFacts, MatrixModel, Regressor, XGBoostTrainer


class MedianTrainer:
    """A model kind that always predicts the median of the rows it was fitted on."""

    tunable: tuple[str, ...] = ()
    search_space: Mapping[str, Any] = {}
    stored_types: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()

    def hyperparameters(self, training: TrainingSettings) -> dict[str, Any]:
        return {}

    def typed(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def fit(
        self, rows: EncodedSplit, training: TrainingSettings, params: Mapping[str, Any]
    ) -> Regressor:
        median = DummyRegressor(strategy="median")
        regressor: Regressor = median.fit(rows.fit.features, rows.fit.target)
        return regressor

    def describe(self, regressor: Regressor) -> FitFacts:
        return FitFacts(rounds=1, importances={}, importance_measure="none")

    def matrix_model(self, regressor: Regressor) -> MatrixModel | None:
        return None


def test_registered_pipelines_keep_their_stored_format(tiny_model: model.TrainedModel) -> None:
    """Versions already in MLflow were stored as these steps and types: they still load."""
    assert [name for name, _ in tiny_model.pipeline.steps] == ["encode", "regress"]
    assert model.stored_types() == [
        "lakeloop.model.FeatureEncoder",
        "xgboost.core.Booster",
        "xgboost.sklearn.XGBRegressor",
    ]
    assert isinstance(model.encoder_of(tiny_model.pipeline), model.FeatureEncoder)
    assert model.fast_path(tiny_model.pipeline) is not None


def test_xgboost_describes_what_it_fitted(tiny_model: model.TrainedModel) -> None:
    facts = tiny_model.facts
    assert 1 <= facts.rounds <= 40
    assert set(facts.importances) <= set(model.encoder_of(tiny_model.pipeline).numeric) | {
        name for name, _ in model.encoder_of(tiny_model.pipeline).categories
    }
    assert max(facts.importances, key=facts.importances.__getitem__) == "median_income"
    assert facts.importance_measure == "total gain"


def test_xgboost_reads_handed_on_hyperparameters_as_it_fits_them() -> None:
    """MLflow gives parameters back as strings; only the tunable ones are handed on."""
    logged = {"max_depth": "5", "learning_rate": "0.2", "n_estimators": "300", "seed": "42"}
    assert XGBoostTrainer().typed(logged) == {"max_depth": 5, "learning_rate": 0.2}


def test_another_model_kind_trains_is_evaluated_and_served(
    market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    trained = model.train(market_batch, spec, TrainingSettings(), trainer=MedianTrainer())
    assert len(set(trained.predicted)) == 1
    assert trained.metrics["mae"] == pytest.approx(trained.metrics["baseline_mae"], rel=0.05)
    assert set(evaluation.figures(trained, spec)) >= {"feature_importance.png"}
    assert evaluation.segment_metrics(trained, spec)
    # Not the selected kind: no fast path, served through the pipeline's own predict.
    assert model.fast_path(trained.pipeline) is None
    assert MatrixKernel.of(trained.pipeline) is None
    predictor = Predictor(model=trained.pipeline, name="m", version="1")
    columns = {name: list(trained.input_example[name]) for name in spec.feature_names}
    served = predictor.predict_columns(columns)
    np.testing.assert_array_equal(served, trained.predicted[: len(served)])
