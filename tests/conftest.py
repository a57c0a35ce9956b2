"""Shared fixtures: the dataset description, small real models, settings on a scratch folder."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.model import TrainedModel, train
from lakeloop.settings import Settings, TrainingSettings, load_settings
from tooling import market


@pytest.fixture(scope="session")
def spec() -> DatasetSpec:
    return load_spec()


@pytest.fixture(scope="session")
def market_batch() -> pd.DataFrame:
    return market.generate_batch(rows=3000, seed=7)


@pytest.fixture(scope="session")
def tiny_model(market_batch: pd.DataFrame, spec: DatasetSpec) -> TrainedModel:
    """A real XGBoost pipeline, small enough to train in a second."""
    return train(market_batch, spec, TrainingSettings(n_estimators=40))


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings on a scratch state folder, ignoring any LAKELOOP_* of the developer's shell."""
    for name in [n for n in os.environ if n.startswith("LAKELOOP_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return load_settings(state_dir=tmp_path / "state")
