"""The prediction API with a small real model in its slot (no registry)."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.predictor import ModelSlot, Predictor
from lakeloop.dataset import DatasetSpec
from lakeloop.model import TrainedModel
from lakeloop.settings import Settings


@pytest.fixture
def slot(tiny_model: TrainedModel) -> ModelSlot:
    return ModelSlot(Predictor(model=tiny_model.pipeline, name="housing-price", version="3"))


@pytest.fixture
def client(settings: Settings, slot: ModelSlot) -> Iterator[TestClient]:
    with TestClient(create_app(settings, slot=slot, follow_registry=False)) as test_client:
        yield test_client


def _records(frame: pd.DataFrame, spec: DatasetSpec) -> list[dict[str, object]]:
    rows = frame[spec.feature_names]
    return rows.astype(object).where(rows.notna(), None).to_dict(orient="records")


def test_predicts_a_batch_in_order_with_model_version(
    client: TestClient, market_batch: pd.DataFrame, spec: DatasetSpec, tiny_model: TrainedModel
) -> None:
    records = _records(market_batch.head(4), spec)
    response = client.post("/v1/predict", json={"records": records})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"name": "housing-price", "version": "3"}
    expected = tiny_model.pipeline.predict(market_batch.head(4)[spec.feature_names])
    assert body["predictions"] == pytest.approx(list(expected), rel=1e-5)


def test_missing_feature_is_422_naming_it(
    client: TestClient, market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    record = _records(market_batch.head(1), spec)[0]
    del record["median_income"]
    response = client.post("/v1/predict", json={"records": [record]})
    assert response.status_code == 422
    assert "median_income" in response.text


def test_out_of_bounds_value_is_422_naming_field(
    client: TestClient, market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    record = _records(market_batch.head(1), spec)[0] | {"households": -5}
    response = client.post("/v1/predict", json={"records": [record]})
    assert response.status_code == 422
    assert "households" in response.text


def test_unknown_field_and_empty_batch_are_refused(
    client: TestClient, market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    record = _records(market_batch.head(1), spec)[0] | {"garden_size": 3}
    assert client.post("/v1/predict", json={"records": [record]}).status_code == 422
    assert client.post("/v1/predict", json={"records": []}).status_code == 422


def test_nullable_feature_accepts_null(
    client: TestClient, market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    record = _records(market_batch.head(1), spec)[0] | {"total_bedrooms": None}
    assert client.post("/v1/predict", json={"records": [record]}).status_code == 200


def test_swapping_the_slot_changes_the_served_version(
    client: TestClient, slot: ModelSlot, tiny_model: TrainedModel
) -> None:
    assert client.get("/v1/model").json()["version"] == "3"
    slot.current = Predictor(model=tiny_model.pipeline, name="housing-price", version="4")
    assert client.get("/v1/model").json()["version"] == "4"


def test_not_ready_without_a_model(settings: Settings) -> None:
    with TestClient(create_app(settings, slot=ModelSlot(), follow_registry=False)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        response = client.post("/v1/predict", json={"records": [{}]})
        assert response.status_code in {422, 503}
        assert client.get("/v1/model").status_code == 503


def test_openapi_documents_every_feature_with_bounds(client: TestClient, spec: DatasetSpec) -> None:
    document = client.get("/schema/openapi.json").json()
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert {"predict", "getModel", "health", "ready"} <= operations
    record = document["components"]["schemas"]["HouseFeatures"]
    assert set(record["required"]) == set(spec.feature_names)
    assert client.get("/schema/swagger").status_code == 200
