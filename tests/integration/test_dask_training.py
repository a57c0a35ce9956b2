"""Training on a Dask cluster (a real two-process ``distributed.LocalCluster`` on loopback) gives
the same kind of model as training in process: a plain sklearn pipeline that takes raw records,
scores about as well on the same holdout, and logs and loads through MLflow like any other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline
from xgboost import XGBRegressor

from lakeloop.dataset import DatasetSpec
from lakeloop.model import TrainedModel, regressor_of, train
from lakeloop.registry import TRUSTED_MODEL_TYPES
from lakeloop.settings import TrainingSettings
from tests.utils.dask_cluster import local_cluster
from tooling import market

pytestmark = pytest.mark.integration

# The same hyperparameters on both sides; only where the fit runs differs.
ROUNDS = 120


@pytest.fixture(scope="module")
def scheduler_address() -> Iterator[str]:
    with local_cluster() as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def sales() -> pd.DataFrame:
    return market.generate_batch(rows=8000, seed=11)


@pytest.fixture(scope="module")
def in_process(sales: pd.DataFrame, spec: DatasetSpec) -> TrainedModel:
    return train(sales, spec, TrainingSettings(n_estimators=ROUNDS))


@pytest.fixture(scope="module")
def on_dask(sales: pd.DataFrame, spec: DatasetSpec, scheduler_address: str) -> TrainedModel:
    settings = TrainingSettings(n_estimators=ROUNDS, dask_scheduler=scheduler_address)
    return train(sales, spec, settings)


def test_the_result_is_a_plain_pipeline_around_a_plain_regressor(on_dask: TrainedModel) -> None:
    assert type(on_dask.pipeline) is Pipeline
    regressor = regressor_of(on_dask.pipeline)
    assert type(regressor) is XGBRegressor
    assert regressor.enable_categorical
    # Early stopping carried over: predictions stop at the best round, not the last.
    assert regressor.best_iteration < ROUNDS - 1


def test_holdout_metrics_are_close_to_in_process_training(
    on_dask: TrainedModel, in_process: TrainedModel
) -> None:
    assert on_dask.holdout_rows == in_process.holdout_rows
    assert on_dask.train_rows == in_process.train_rows
    assert on_dask.metrics["mae"] == pytest.approx(in_process.metrics["mae"], rel=0.05)
    assert on_dask.metrics["rmse"] == pytest.approx(in_process.metrics["rmse"], rel=0.05)


def test_raw_records_are_predicted_like_the_in_process_model(
    on_dask: TrainedModel, in_process: TrainedModel, spec: DatasetSpec
) -> None:
    records = on_dask.holdout[list(reversed(spec.feature_names))].head(200).copy()
    records["ocean_proximity"] = records["ocean_proximity"].astype(object)
    records.loc[records.index[0], "ocean_proximity"] = "ON THE MOON"  # unknown: still predicted
    distributed, local = on_dask.pipeline.predict(records), in_process.pipeline.predict(records)
    assert np.isfinite(distributed).all()
    assert np.median(np.abs(distributed - local) / local) < 0.1


def test_the_same_data_in_another_order_gives_the_same_model(
    sales: pd.DataFrame, spec: DatasetSpec, scheduler_address: str, on_dask: TrainedModel
) -> None:
    """Partitions follow row content, not read order, so retraining a commit is reproducible."""
    settings = TrainingSettings(n_estimators=ROUNDS, dask_scheduler=scheduler_address)
    again = train(sales.sample(frac=1.0, random_state=5), spec, settings)
    features = sales[spec.feature_names]
    assert (again.pipeline.predict(features) == on_dask.pipeline.predict(features)).all()
    # The holdout comes back in read order, so float sums may differ in the last digit.
    assert again.metrics == pytest.approx(on_dask.metrics, rel=1e-12)


def test_the_pipeline_saves_and_loads_with_the_trusted_skops_types(
    on_dask: TrainedModel, tmp_path: Path
) -> None:
    saved = tmp_path / "model"
    mlflow.sklearn.save_model(
        on_dask.pipeline,
        str(saved),
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=TRUSTED_MODEL_TYPES,
    )
    loaded = mlflow.sklearn.load_model(str(saved))
    example = on_dask.input_example
    assert (loaded.predict(example) == on_dask.pipeline.predict(example)).all()
