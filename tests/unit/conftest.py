"""Fixtures of the API's unit tests: a served model and one record it can answer."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from api.predictor import ModelSlot, Predictor
from lakeloop.dataset import DatasetSpec
from lakeloop.loop import json_records
from lakeloop.model import TrainedModel
from lakeloop.settings import Settings


def with_api(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with these API settings changed."""
    return settings.model_copy(update={"api": settings.api.model_copy(update=changes)})


@pytest.fixture
def slot(tiny_model: TrainedModel) -> ModelSlot:
    return ModelSlot(Predictor(model=tiny_model.pipeline, name="housing-price", version="3"))


@pytest.fixture
def record(market_batch: pd.DataFrame, spec: DatasetSpec) -> dict[str, Any]:
    return json_records(market_batch.head(1)[spec.feature_names])[0]
