"""The prediction API with a small real model in its slot (no registry)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from litestar.testing import TestClient

import api.predictor
from api import openapi
from api.app import create_app
from api.coalesce import Coalescer
from api.ids import prediction_ids
from api.predictor import Example, MatrixKernel, ModelLoadError, ModelSlot, Predictor, refresh
from api.schemas import RequestTypes
from lakeloop import registry
from lakeloop.dataset import DatasetSpec
from lakeloop.loop import feedback_headers, json_records
from lakeloop.model import TrainedModel, train
from lakeloop.settings import Settings, TrainingSettings, load_settings
from lakeloop.stores.objects import ObjectStore
from lakeloop.stores.prediction_log import (
    Entry,
    FeedbackEntry,
    SegmentWriter,
    feedback_table,
    prediction_table,
    read_feedback_log,
    read_prediction_log,
)
from tests.unit.conftest import with_api
from tests.utils.descriptions import changed
from tests.utils.swagger import assert_swagger_page_loads_only_its_own_files

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture
def client(settings: Settings, slot: ModelSlot) -> Iterator[TestClient]:
    with TestClient(create_app(settings, slot=slot, follow_registry=False)) as test_client:
        yield test_client


# Predictions -------------------------------------------------------------------------------


def test_single_record_answers_prediction_id_and_model(
    client: TestClient, record: dict[str, Any], spec: DatasetSpec, tiny_model: TrainedModel
) -> None:
    response = client.post("/v1/predict", json=record)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"name": "housing-price", "version": "3"}
    assert UUID7.match(body["prediction_id"])
    expected = tiny_model.pipeline.predict(pd.DataFrame([record])[spec.feature_names])
    assert body["prediction"] == pytest.approx(float(expected[0]), rel=1e-6)


def test_batch_of_records_and_of_columns_agree_with_the_pipeline(
    client: TestClient, market_batch: pd.DataFrame, spec: DatasetSpec, tiny_model: TrainedModel
) -> None:
    records = json_records(market_batch.head(50)[spec.feature_names])
    expected = list(tiny_model.pipeline.predict(market_batch.head(50)[spec.feature_names]))
    by_records = client.post("/v1/predict/batch", json={"records": records}).json()
    columns = {name: [r[name] for r in records] for name in spec.feature_names}
    by_columns = client.post("/v1/predict/batch", json={"columns": columns}).json()
    for body in (by_records, by_columns):
        assert body["model"] == {"name": "housing-price", "version": "3"}
        assert body["predictions"] == pytest.approx(expected, rel=1e-6)
        ids = body["prediction_ids"]
        assert len(set(ids)) == 50
        assert ids == sorted(ids)  # UUIDv7: time-ordered, consecutive within a batch
    assert by_records["prediction_ids"][-1] < by_columns["prediction_ids"][0]


def test_unknown_category_is_treated_as_unknown_not_rejected(
    client: TestClient, record: dict[str, Any]
) -> None:
    response = client.post("/v1/predict", json=record | {"ocean_proximity": "ON THE MOON"})
    assert response.status_code == 200


def test_nullable_feature_accepts_null(client: TestClient, record: dict[str, Any]) -> None:
    assert client.post("/v1/predict", json=record | {"total_bedrooms": None}).status_code == 200


@pytest.mark.parametrize("case", ["normal", "null", "unknown category"])
def test_booster_kernel_matches_the_pipeline(
    case: str, market_batch: pd.DataFrame, spec: DatasetSpec, tiny_model: TrainedModel
) -> None:
    """The hot path (float32 matrix → inplace_predict) gives the pipeline's predictions."""
    frame = market_batch[spec.feature_names].head(300).copy()
    if case == "null":
        frame["total_bedrooms"] = np.nan
    if case == "unknown category":
        frame["ocean_proximity"] = "ATLANTIS"
    kernel = MatrixKernel.of(tiny_model.pipeline)
    assert kernel is not None
    rows = json_records(frame[spec.feature_names])
    columns = {name: [row[name] for row in rows] for name in spec.feature_names}
    expected = tiny_model.pipeline.predict(frame)
    np.testing.assert_allclose(
        kernel.predict(kernel.matrix_from_columns(columns)), expected, rtol=1e-6
    )
    predictor = Predictor(model=tiny_model.pipeline, name="m", version="1")
    single = [predictor.predict_columns({k: [v] for k, v in row.items()})[0] for row in rows[:20]]
    np.testing.assert_allclose(single, expected[:20], rtol=1e-6)


def _awkward_rows(market_batch: pd.DataFrame, spec: DatasetSpec, rows: int) -> pd.DataFrame:
    """``rows`` rows with what the hot path has to get right: nulls, unknown categories."""
    frame = market_batch[spec.feature_names].head(rows).copy()
    frame.loc[frame.index[::7], "total_bedrooms"] = np.nan
    frame.loc[frame.index[3::11], "ocean_proximity"] = "ATLANTIS"
    return frame


def test_a_full_batch_equals_the_logged_pipeline_exactly(
    client: TestClient, market_batch: pd.DataFrame, spec: DatasetSpec, tiny_model: TrainedModel
) -> None:
    """1,000 records (the batch limit) through the fast path, as records and as columns, give
    bit for bit what the logged pipeline's ``predict`` gives on the same rows."""
    frame = _awkward_rows(market_batch, spec, 1000)
    expected = tiny_model.pipeline.predict(frame)
    records = json_records(frame[spec.feature_names])
    columns = {name: [r[name] for r in records] for name in spec.feature_names}
    for body in ({"records": records}, {"columns": columns}):
        response = client.post("/v1/predict/batch", json=body)
        assert response.status_code == 200
        served = np.asarray(response.json()["predictions"], dtype=expected.dtype)
        np.testing.assert_array_equal(served, expected)


def test_kernel_matrix_from_records_equals_from_columns(
    market_batch: pd.DataFrame, spec: DatasetSpec, tiny_model: TrainedModel
) -> None:
    """Decoded structs transposed in C give the same matrix as columns, nulls and unknown
    categories as NaN."""
    frame = _awkward_rows(market_batch, spec, 40)
    records = json_records(frame[spec.feature_names])
    types = RequestTypes.for_spec(spec, max_batch=1000)
    structs = [types.record(**record) for record in records]
    kernel = MatrixKernel.of(tiny_model.pipeline)
    assert kernel is not None
    columns = kernel.matrix_from_columns(
        {name: [r[name] for r in records] for name in spec.feature_names}
    )
    np.testing.assert_array_equal(kernel.matrix_from_records(structs), columns)
    np.testing.assert_array_equal(kernel.matrix_from_records(structs[:1]), columns[:1])
    unknown = kernel.names.index("ocean_proximity")
    assert np.isnan(columns[3::11, unknown]).all()
    assert not np.isnan(np.delete(columns[:, unknown], np.s_[3::11])).any()


# Errors ------------------------------------------------------------------------------------


def test_every_bad_field_is_named_in_one_422(client: TestClient, record: dict[str, Any]) -> None:
    bad = dict(record) | {"households": -5, "longitude": "far west", "garden_size": 3}
    del bad["median_income"]
    response = client.post("/v1/predict", json=bad)
    assert response.status_code == 422
    problems = {error["field"]: error["message"] for error in response.json()["errors"]}
    assert set(problems) == {"households", "longitude", "garden_size", "median_income"}
    assert "missing" in problems["median_income"]
    assert ">= 1.0" in problems["households"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_422_naming_the_field(
    client: TestClient, record: dict[str, Any], token: str
) -> None:
    body = json.dumps(record | {"latitude": "PLACEHOLDER"}).replace('"PLACEHOLDER"', token)
    response = client.post("/v1/predict", content=body)
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "latitude"
    assert "finite" in error["message"]


def test_a_number_sent_as_a_string_is_refused(client: TestClient, record: dict[str, Any]) -> None:
    response = client.post("/v1/predict", json=record | {"median_income": "3.5"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "median_income"


def test_batch_errors_name_the_record(client: TestClient, record: dict[str, Any]) -> None:
    response = client.post(
        "/v1/predict/batch", json={"records": [record, record | {"population": 0}]}
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["location"] == "$.records[1].population"


@pytest.mark.parametrize(
    "body",
    [
        {"records": []},
        {},
        {"records": None},
        {"records": [{}], "columns": {}},
        {"rows": []},
        [],
        "text",
    ],
)
def test_malformed_batches_are_422(client: TestClient, body: Any) -> None:
    response = client.post("/v1/predict/batch", json=body)
    assert response.status_code == 422
    assert response.json()["errors"]


@pytest.mark.parametrize(
    ("value", "message"),
    [("NaN", "finite"), ("Infinity", "finite"), ('"3.5"', "Expected `float`"), ("99.0", "<= 42.1")],
)
def test_a_bad_value_in_a_column_is_422_naming_its_row(
    client: TestClient, record: dict[str, Any], spec: DatasetSpec, value: str, message: str
) -> None:
    columns = {name: [record[name]] * 3 for name in spec.feature_names}
    columns["latitude"][2] = "PLACEHOLDER"
    body = json.dumps({"columns": columns}).replace('"PLACEHOLDER"', value)
    response = client.post("/v1/predict/batch", content=body)
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert (error["field"], error["location"]) == ("latitude", "$.columns.latitude[2]")
    assert message in error["message"]


def test_a_missing_column_is_422(
    client: TestClient, record: dict[str, Any], spec: DatasetSpec
) -> None:
    columns = {name: [record[name]] * 2 for name in spec.feature_names if name != "households"}
    response = client.post("/v1/predict/batch", json={"columns": columns})
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert (error["field"], error["message"]) == ("households", "required, missing")


def test_columns_of_different_lengths_are_422(
    client: TestClient, record: dict[str, Any], spec: DatasetSpec
) -> None:
    columns = {name: [record[name]] * 2 for name in spec.feature_names}
    columns["population"] = columns["population"][:1]
    response = client.post("/v1/predict/batch", json={"columns": columns})
    assert response.status_code == 422
    assert "length" in response.text


def test_invalid_json_is_400(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b'{"longitude": ')
    assert response.status_code == 400


def test_over_the_batch_limit_is_413(
    settings: Settings, slot: ModelSlot, record: dict[str, Any], spec: DatasetSpec
) -> None:
    limited = with_api(settings, max_batch=3)
    with TestClient(create_app(limited, slot=slot, follow_registry=False)) as client:
        assert client.post("/v1/predict/batch", json={"records": [record] * 3}).status_code == 200
        assert client.post("/v1/predict/batch", json={"records": [record] * 4}).status_code == 413
        columns = {name: [record[name]] * 4 for name in spec.feature_names}
        assert client.post("/v1/predict/batch", json={"columns": columns}).status_code == 413


def test_over_the_body_limit_is_413(
    settings: Settings, slot: ModelSlot, record: dict[str, Any]
) -> None:
    limited = with_api(settings, max_body_bytes=2048)
    with TestClient(create_app(limited, slot=slot, follow_registry=False)) as client:
        response = client.post("/v1/predict/batch", json={"records": [record] * 50})
        assert response.status_code == 413


def test_not_ready_without_a_model(settings: Settings, record: dict[str, Any]) -> None:
    with TestClient(create_app(settings, slot=ModelSlot(), follow_registry=False)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        response = client.post("/v1/predict", json=record)
        assert response.status_code == 503
        assert "train one" in response.json()["detail"]
        assert client.post("/v1/predict", json={}).status_code == 422  # bad input still says so
        assert client.get("/v1/model").status_code == 503


# Swap, reload, readiness -------------------------------------------------------------------


def test_swapping_the_slot_changes_the_served_version_and_counts(
    client: TestClient, slot: ModelSlot, tiny_model: TrainedModel, record: dict[str, Any]
) -> None:
    assert client.get("/v1/model").json()["version"] == "3"
    slot.swap(Predictor(model=tiny_model.pipeline, name="housing-price", version="4"))
    assert client.get("/v1/model").json()["version"] == "4"
    assert client.post("/v1/predict", json=record).json()["model"]["version"] == "4"
    metrics = client.get("/metrics").text
    assert "lakeloop_api_model_swaps_total 1.0" in metrics
    assert 'lakeloop_api_model_info{model_version="4"} 1.0' in metrics


def test_the_request_schema_and_openapi_follow_the_served_model_through_a_swap(
    settings: Settings,
    tiny_model: TrainedModel,
    market_batch: pd.DataFrame,
    spec: DatasetSpec,
    record: dict[str, Any],
) -> None:
    """The API is started with a description that drops `total_bedrooms` while the champion was
    trained with it: requests valid for the champion keep working, under its schema, until a model
    trained under the new description is swapped in; then the schema swaps with the model."""
    dropped = changed(drop="total_bedrooms")
    newer = train(market_batch[dropped.columns], dropped, TrainingSettings(n_estimators=20))
    old = Predictor(model=tiny_model.pipeline, name="housing-price", version="3", spec=spec)
    slot = ModelSlot(old)
    without = {name: value for name, value in record.items() if name != "total_bedrooms"}

    def documented(client: TestClient) -> tuple[set[str], str]:
        document = client.get("/schema/openapi.json").json()
        record_schema = document["components"]["schemas"]["HouseFeatures"]
        return set(record_schema["properties"]), document["info"]["description"]

    with TestClient(create_app(settings, spec=dropped, slot=slot, follow_registry=False)) as client:
        assert client.post("/v1/predict", json=record).json()["model"]["version"] == "3"
        columns = {name: [value, value] for name, value in record.items()}
        batch = client.post("/v1/predict/batch", json={"columns": columns})
        assert batch.status_code == 200
        refused = client.post("/v1/predict", json=without)
        assert refused.status_code == 422
        assert [error["field"] for error in refused.json()["errors"]] == ["total_bedrooms"]
        fields, description = documented(client)
        assert "total_bedrooms" in fields
        assert "description v1" in description
        assert "total_bedrooms" in client.get("/schema/swagger").text

        slot.swap(Predictor(model=newer.pipeline, name="housing-price", version="4", spec=dropped))
        assert client.post("/v1/predict", json=without).json()["model"]["version"] == "4"
        stale = client.post("/v1/predict", json=record)
        assert stale.status_code == 422
        assert stale.json()["errors"][0]["field"] == "total_bedrooms"
        assert "unknown field" in stale.json()["errors"][0]["message"]
        fields, description = documented(client)
        assert fields == set(dropped.feature_names)
        assert "description v2" in description
        assert "total_bedrooms" not in client.get("/schema/swagger").text
        batch = client.post("/v1/predict/batch", json={"records": [without, without]})
        assert batch.json()["model"]["version"] == "4"

    # The log keeps each model's own features: the dropped one is null in the new model's rows.
    logged = read_prediction_log(settings.object_store)
    by_version = logged.groupby("model_version")["total_bedrooms"]
    assert by_version.count().to_dict() == {"3": 3, "4": 0}
    assert by_version.size().to_dict() == {"3": 3, "4": 3}


class FakeRegistry:
    """Stands in for ``load_champion``: serves a champion version, or fails like a dead MLflow."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.version: str | None = None
        self.down = False
        self.corrupt: set[str] = set()
        self.attempts = 0
        self.warmed_with: Any = None
        self.spec: DatasetSpec | None = None
        """The description the champion was recorded with (None: none recorded)."""
        self.refused: registry.Refused | None = None
        self.blocked: registry.Blocked | None = None

    def newest_refusal(self, settings: Settings) -> registry.Refused | None:
        """Stands in for ``newest_refusal``: the newest version, when the gate refused it."""
        return self.refused

    def training_blocked(self, settings: Settings) -> registry.Blocked | None:
        """Stands in for ``training_blocked``: the registered model's block record."""
        if self.down:
            raise ConnectionError("MLflow at 127.0.0.1:5000 refused the connection")
        return self.blocked

    def __call__(
        self,
        settings: Settings,
        *,
        known_version: str | None,
        example: Example | None = None,
        skip_version: str | None = None,
    ) -> Predictor | None:
        if self.down:
            raise ConnectionError("MLflow at 127.0.0.1:5000 refused the connection")
        if self.version is None or self.version == known_version:
            return None
        if self.version == skip_version:
            raise ModelLoadError(self.version, "skipped", retried=False)
        self.attempts += 1
        if self.version in self.corrupt:
            raise ModelLoadError(self.version, "ValueError: File is not a zip file")
        predictor = Predictor(
            model=self.model, name="housing-price", version=self.version, spec=self.spec
        )
        if example is None:
            return predictor
        self.warmed_with = example(predictor)
        return predictor.warm(self.warmed_with)


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch, tiny_model: TrainedModel) -> FakeRegistry:
    fake = FakeRegistry(tiny_model.pipeline)
    monkeypatch.setattr(api.predictor, "load_champion", fake)
    monkeypatch.setattr(api.predictor, "training_blocked", fake.training_blocked)
    monkeypatch.setattr(api.predictor, "newest_refusal", fake.newest_refusal)
    return fake


def test_a_trained_and_refused_model_is_named_where_the_user_looks(
    settings: Settings, fake_registry: FakeRegistry, record: dict[str, Any]
) -> None:
    """No champion because the gate refused the only model: the 503 and /readyz say which version
    and why, instead of asking the user to train one."""
    fake_registry.refused = registry.Refused(
        version="1", commit_id="ab" * 32, reasons="MAE 69,035 > threshold 45,000"
    )
    headers = {"Authorization": f"Bearer {settings.api_admin_token()}"}
    with TestClient(create_app(settings, slot=ModelSlot(), follow_registry=False)) as client:
        assert client.post("/v1/admin/reload", headers=headers).json()["changed"] is False
        answer = client.post("/v1/predict", json=record)
        assert answer.status_code == 503
        detail = answer.json()["detail"]
        assert "version 1 (lakeFS commit abababababab) was trained and refused" in detail
        assert "MAE 69,035 > threshold 45,000" in detail
        assert "lakeloop model show 1" in detail
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["refused_version"] == "1"
        assert ready.json()["refused_reasons"] == "MAE 69,035 > threshold 45,000"
        assert "refused by the gate" in ready.json()["detail"]

        fake_registry.version = "2"  # a later model passes the gate
        assert client.post("/v1/admin/reload", headers=headers).json()["version"] == "2"
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready.get("refused_version") is None


def test_blocked_training_shows_the_stale_champion_in_readyz_and_metrics(
    client: TestClient, settings: Settings, fake_registry: FakeRegistry
) -> None:
    headers = {"Authorization": f"Bearer {settings.api_admin_token()}"}
    client.post("/v1/admin/reload", headers=headers)
    assert client.get("/readyz").json()["training"] == "ok"
    assert "lakeloop_training_blocked 0.0" in client.get("/metrics").text
    fake_registry.blocked = registry.Blocked(
        commit_id="ab" * 32,
        since="2026-11-29T10:00:00+00:00",
        tables=["data/2-again/again.csv"],
        reason="data/2-again/again.csv: expect_compound_columns_to_be_unique ...",
        commits_behind=3,
    )
    client.post("/v1/admin/reload", headers=headers)
    ready = client.get("/readyz")
    assert ready.status_code == 200  # still serving: taking it out of rotation fixes nothing
    body = ready.json()
    assert body["status"] == "degraded"
    assert body["champion_commits_behind"] == 3
    assert "data/2-again/again.csv" in body["training"]
    assert "3 commits behind" in body["detail"]
    assert "lakeloop data remove" in body["detail"]
    metrics = client.get("/metrics").text
    assert "lakeloop_training_blocked 1.0" in metrics
    assert "lakeloop_champion_commits_behind 3.0" in metrics
    fake_registry.blocked = None
    client.post("/v1/admin/reload", headers=headers)
    assert client.get("/readyz").json()["status"] == "ready"
    assert "lakeloop_training_blocked 0.0" in client.get("/metrics").text


def test_reload_needs_the_admin_token(
    client: TestClient, settings: Settings, fake_registry: FakeRegistry
) -> None:
    fake_registry.version = "4"
    assert client.post("/v1/admin/reload").status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert client.post("/v1/admin/reload", headers=wrong).status_code == 401
    right = {"Authorization": f"Bearer {settings.api_admin_token()}"}
    response = client.post("/v1/admin/reload", headers=right)
    assert response.status_code == 200
    assert response.json() == {"changed": True, "version": "4", "previous_version": "3"}
    assert fake_registry.warmed_with is not None  # warmed before the swap
    assert client.get("/v1/model").json()["version"] == "4"


def test_registry_outage_keeps_serving_and_shows_in_readyz(
    client: TestClient, settings: Settings, fake_registry: FakeRegistry, record: dict[str, Any]
) -> None:
    fake_registry.down = True
    headers = {"Authorization": f"Bearer {settings.api_admin_token()}"}
    assert client.post("/v1/admin/reload", headers=headers).status_code == 503
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert "refused" in ready.json()["registry"]
    assert client.post("/v1/predict", json=record).status_code == 200
    fake_registry.down = False
    assert client.post("/v1/admin/reload", headers=headers).json()["changed"] is False
    assert client.get("/readyz").json()["status"] == "ready"


def test_refresh_swaps_only_when_the_champion_moves(
    settings: Settings, fake_registry: FakeRegistry
) -> None:
    slot = ModelSlot()

    async def checks() -> list[bool]:
        first = await refresh(settings, slot)
        fake_registry.version = "7"
        return [first, await refresh(settings, slot), await refresh(settings, slot)]

    assert asyncio.run(checks()) == [False, True, False]
    assert slot.current is not None
    assert slot.current.version == "7"
    assert slot.swaps == 1


def test_a_champion_that_will_not_load_keeps_the_last_good_one_serving(
    client: TestClient, settings: Settings, fake_registry: FakeRegistry, record: dict[str, Any]
) -> None:
    fake_registry.version, fake_registry.corrupt = "5", {"5"}
    headers = {"Authorization": f"Bearer {settings.api_admin_token()}"}
    refused = client.post("/v1/admin/reload", headers=headers)
    assert refused.status_code == 503
    assert "version 5" in refused.json()["detail"]
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() | {"last_registry_check": None} == {
        "status": "degraded",
        "detail": (
            "serving version 3; the champion, version 5, cannot be loaded: "
            "ValueError: File is not a zip file"
        ),
        "model_version": "3",
        "registry": "ok",
        "last_registry_check": None,
        "failed_version": "5",
        "load_error": "ValueError: File is not a zip file",
        "prediction_log": "ok",
        "training": "ok",
        "champion_commits_behind": None,
        "refused_version": None,
        "refused_reasons": None,
    }
    assert client.post("/v1/predict", json=record).json()["model"]["version"] == "3"
    assert 'lakeloop_api_model_load_failures_total{model_version="5"} 1.0' in (
        client.get("/metrics").text
    )
    fake_registry.version = "6"
    assert client.post("/v1/admin/reload", headers=headers).json()["version"] == "6"
    assert client.get("/readyz").json()["status"] == "ready"


def test_polling_pauses_before_retrying_a_version_that_failed(
    settings: Settings, fake_registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The slot's clock stands still: the polls below fall within the pause however slow the
    # machine, and the pause ends when the test says so.
    monkeypatch.setattr(api.predictor, "time", SimpleNamespace(monotonic=lambda: 1000.0))
    slot = ModelSlot()
    fake_registry.version, fake_registry.corrupt = "5", {"5"}

    async def polls() -> None:
        for _ in range(3):
            with pytest.raises(ModelLoadError):
                await refresh(settings, slot)

    asyncio.run(polls())
    assert fake_registry.attempts == 1  # the next two polls fell within the pause
    assert slot.failed_version == "5"
    assert slot.load_failures == 1
    slot.retry_at = 0.0  # the pause is over
    asyncio.run(polls())
    assert fake_registry.attempts == 2
    assert slot.retry_pause == 10.0  # doubled for the same version
    fake_registry.corrupt.clear()
    slot.retry_at = 0.0
    assert asyncio.run(refresh(settings, slot)) is True
    assert slot.failed_version is None


def test_a_segment_that_cannot_be_written_is_counted_and_the_writer_recovers(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "predictions"
    folder.write_text("a file where the folder should be")  # mkdir fails like a broken disk
    lost: list[int] = []
    writer = SegmentWriter(
        ObjectStore.folder(folder),
        feedback_table,
        max_rows=100,
        flush_rows=100,
        flush_seconds=60,
        on_write_error=lost.append,
    )
    entry = FeedbackEntry(at=datetime.now(UTC), prediction_id="p", actual=1.0)
    writer.put(entry)
    writer.put(entry)
    assert writer.flush() is None
    assert (lost, writer.lost_rows, writer.write_errors) == ([2], 2, 1)
    assert writer.failing
    assert "FileExistsError" in writer.last_error
    folder.unlink()
    writer.put(entry)
    written = writer.flush()
    assert written is not None
    assert [path.name for path in folder.iterdir()] == [Path(written).name]  # no partial file
    assert not writer.failing


def test_placeholder_admin_token_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="ADMIN_TOKEN"):
        load_settings(state_dir=settings.state_dir, api={"admin_token": "changeme"})


# Metrics, CORS -----------------------------------------------------------------------------


def test_metrics_count_requests_by_endpoint_and_predictions_by_version(
    client: TestClient, record: dict[str, Any]
) -> None:
    client.post("/v1/predict", json=record)
    client.post("/v1/predict/batch", json={"records": [record, record]})
    client.post("/v1/predict", json={})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert (
        'lakeloop_api_requests_total{endpoint="/v1/predict",method="POST",status="200"} 1.0' in text
    )
    assert (
        'lakeloop_api_requests_total{endpoint="/v1/predict",method="POST",status="422"} 1.0' in text
    )
    assert 'lakeloop_api_predictions_total{model_version="3"} 3.0' in text
    assert 'lakeloop_api_request_duration_seconds_count{endpoint="/v1/predict/batch"} 1.0' in text


def test_no_cors_headers_unless_configured(client: TestClient, record: dict[str, Any]) -> None:
    response = client.post("/v1/predict", json=record, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


# Prediction log ----------------------------------------------------------------------------


def test_every_prediction_and_feedback_lands_in_the_log_on_shutdown(
    settings: Settings, slot: ModelSlot, record: dict[str, Any]
) -> None:
    with TestClient(create_app(settings, slot=slot, follow_registry=False)) as client:
        single = client.post("/v1/predict", json=record | {"ocean_proximity": "MARS"}).json()
        rows = [record, record | {"total_bedrooms": None}, record | {"ocean_proximity": "VENUS"}]
        batch = client.post("/v1/predict/batch", json={"records": rows}).json()
        columns = {name: [row[name] for row in rows] for name in record}
        by_columns = client.post("/v1/predict/batch", json={"columns": columns}).json()
        feedback = {"prediction_id": single["prediction_id"], "actual": 250_000.0}
        reported = client.post("/v1/feedback", json=feedback, headers=feedback_headers(settings))
        assert reported.status_code == 202
    logged = read_prediction_log(settings.object_store)
    assert list(logged["prediction_id"]) == [
        single["prediction_id"],
        *batch["prediction_ids"],
        *by_columns["prediction_ids"],
    ]
    assert set(logged["model_version"]) == {"3"}
    assert logged["prediction"].tolist() == pytest.approx(
        [single["prediction"], *batch["predictions"], *by_columns["predictions"]]
    )
    # Categories logged as sent, unknown ones included.
    kinds = [record["ocean_proximity"]] * 2 + ["VENUS"]
    assert logged["ocean_proximity"].tolist() == ["MARS", *kinds, *kinds]
    assert logged["median_income"].iloc[1:].tolist() == pytest.approx([record["median_income"]] * 6)
    nulls = [False, True, False]  # the second row of each batch
    assert logged["total_bedrooms"].isna().tolist() == [False, *nulls, *nulls]
    stored = read_feedback_log(settings.object_store)
    assert stored.to_dict("records")[0]["actual"] == 250_000.0


def test_feedback_is_validated(client: TestClient, settings: Settings) -> None:
    client.headers.update(feedback_headers(settings))
    assert client.post("/v1/feedback", json={"prediction_id": "x", "actual": 1}).status_code == 422
    missing = client.post("/v1/feedback", json={"actual": 1})
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["field"] == "prediction_id"


def test_only_a_client_with_a_token_reports_prices_and_each_report_names_its_client(
    settings: Settings, slot: ModelSlot, record: dict[str, Any]
) -> None:
    """Reported prices become training data: without a client's token (none, another scheme, a
    wrong one, the admin token) the answer is 401 and nothing is stored; each client's reports
    are stored with its name."""
    tokens = {"crm": "crm-" + "c" * 40, "sales-feed": "feed-" + "f" * 40}
    teams = load_settings(
        state_dir=settings.state_dir,
        api={"feedback_tokens": tokens, "admin_token": "admin-" + "a" * 40},
    )
    with TestClient(create_app(teams, slot=slot, follow_registry=False)) as client:
        [prediction_id] = client.post("/v1/predict/batch", json={"records": [record]}).json()[
            "prediction_ids"
        ]
        price = {"prediction_id": prediction_id, "actual": 250_000.0}
        refused = [
            client.post("/v1/feedback", json=price, headers=headers)
            for headers in (
                {},
                {"Authorization": f"Basic {tokens['crm']}"},
                {"Authorization": "Bearer " + "c" * 44},
                {"Authorization": "Bearer " + "admin-" + "a" * 40},
                {"Authorization": f"Bearer {tokens['crm']}x"},
            )
        ]
        accepted = [
            client.post("/v1/feedback", json=price, headers={"Authorization": f"Bearer {token}"})
            for token in tokens.values()
        ]
    assert [answer.status_code for answer in refused] == [401] * 5
    assert refused[0].headers["www-authenticate"] == "Bearer"
    assert refused[0].json()["detail"] == (
        "a valid `Authorization: Bearer <client token>` header is required"
    )
    assert [answer.json()["client"] for answer in accepted] == ["crm", "sales-feed"]
    stored = read_feedback_log(teams.object_store)
    assert stored["client"].tolist() == ["crm", "sales-feed"]


def test_each_feedback_client_has_its_own_rate_limit_and_predictions_one_when_set(
    settings: Settings, slot: ModelSlot, record: dict[str, Any]
) -> None:
    """A runaway feed gets 429 (with when to retry) once it passes its limit; another client
    is not held back by it; a 429 is counted in the API's metrics. Predictions are limited per
    address only when a limit is set."""
    tokens = {"crm": "crm-" + "c" * 40, "sales-feed": "feed-" + "f" * 40}
    limited = load_settings(
        state_dir=settings.state_dir,
        api={"feedback_tokens": tokens, "feedback_per_minute": 3, "predictions_per_minute": 2},
    )
    with TestClient(create_app(limited, slot=slot, follow_registry=False)) as client:
        [prediction_id] = client.post("/v1/predict/batch", json={"records": [record]}).json()[
            "prediction_ids"
        ]
        predicted = client.post("/v1/predict", json=record)
        too_many_predictions = client.post("/v1/predict", json=record)
        price = {"prediction_id": prediction_id, "actual": 250_000.0}

        def report(client_name: str) -> Any:
            bearer = {"Authorization": f"Bearer {tokens[client_name]}"}
            return client.post("/v1/feedback", json=price, headers=bearer)

        crm = [report("crm").status_code for _ in range(4)]
        feed = report("sales-feed")
        refused = report("crm")
        metrics = client.get("/metrics").text
    assert predicted.status_code == 200
    assert too_many_predictions.status_code == 429
    assert crm == [202, 202, 202, 429]
    assert feed.status_code == 202
    assert refused.status_code == 429
    assert refused.json()["detail"] == "Too Many Requests"
    assert refused.headers["ratelimit-limit"] == "3"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert 0 < int(refused.headers["ratelimit-reset"]) <= 60
    assert read_feedback_log(limited.object_store)["client"].tolist() == [
        "crm",
        "crm",
        "crm",
        "sales-feed",
    ]
    assert 'lakeloop_api_errors_total{endpoint="/v1/feedback",kind="rate_limited"} 2.0' in metrics


def test_predictions_need_a_client_token_when_tokens_are_set_and_are_limited_per_client(
    settings: Settings, slot: ModelSlot, record: dict[str, Any]
) -> None:
    """With prediction tokens, a request without one of them is 401 (single and batch), and
    the limit per minute counts per client, not per address (both clients share one here;
    requests without a valid token are limited by their address)."""
    tokens = {"shop": "shop-" + "s" * 40, "app": "app-" + "a" * 40}
    closed = load_settings(
        state_dir=settings.state_dir,
        api={"prediction_tokens": tokens, "predictions_per_minute": 3},
    )
    with TestClient(create_app(closed, slot=slot, follow_registry=False)) as client:

        def ask(name: str | None, path: str = "/v1/predict") -> int:
            headers = {"Authorization": f"Bearer {tokens[name]}"} if name else {}
            body = record if path == "/v1/predict" else {"records": [record]}
            return client.post(path, json=body, headers=headers).status_code

        anonymous = [ask(None), ask(None, "/v1/predict/batch")]
        wrong = client.post(
            "/v1/predict", json=record, headers={"Authorization": "Bearer " + "x" * 44}
        ).status_code
        shop = [ask("shop"), ask("shop", "/v1/predict/batch"), ask("shop"), ask("shop")]
        app = ask("app")
    assert anonymous == [401, 401]
    assert wrong == 401  # the third from this address without a valid token: still in its limit
    assert shop == [200, 200, 200, 429]
    assert app == 200


def test_predictions_have_no_rate_limit_unless_one_is_set(
    client: TestClient, record: dict[str, Any]
) -> None:
    answers = [client.post("/v1/predict", json=record).status_code for _ in range(30)]
    assert answers == [200] * 30


def test_a_stack_with_no_configured_clients_has_one_local_client_with_a_stored_token(
    settings: Settings,
) -> None:
    """The laptop: the API and the command line read the same generated token."""
    [(name, token)] = settings.feedback_clients().items()
    assert name == "local"
    assert len(token) >= 40
    assert load_settings(state_dir=settings.state_dir).feedback_clients() == {"local": token}
    assert feedback_headers(settings) == {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        ({"crm": "changeme"}, "the token of 'crm' is a placeholder"),
        ({"crm": "short"}, "shorter than 16 characters"),
        ({"CRM team": "x" * 40}, "client name 'CRM team' must be"),
    ],
)
@pytest.mark.parametrize("kind", ["feedback", "prediction"])
def test_client_tokens_that_would_be_unsafe_are_refused_at_start(
    tokens: dict[str, str], problem: str, kind: str
) -> None:
    with pytest.raises(ValueError, match=f"LAKELOOP_API__{kind.upper()}_TOKENS") as refused:
        load_settings(api={f"{kind}_tokens": tokens})
    assert problem in str(refused.value)


def test_a_reported_value_outside_the_targets_bounds_is_refused_naming_the_bound(
    settings: Settings, slot: ModelSlot, record: dict[str, Any]
) -> None:
    """A price of -5 or 10^12 never reaches the feedback log, where it would count in the
    monitor's error and become training data; the answer names the dataset's bound."""
    with TestClient(create_app(settings, slot=slot, follow_registry=False)) as client:
        client.headers.update(feedback_headers(settings))
        [prediction_id] = client.post("/v1/predict/batch", json={"records": [record]}).json()[
            "prediction_ids"
        ]
        answers = {
            actual: client.post(
                "/v1/feedback", json={"prediction_id": prediction_id, "actual": actual}
            )
            for actual in (-5.0, 1e12, 1000.0, 5_000_000.0)
        }
    assert [answer.status_code for answer in answers.values()] == [422, 422, 202, 202]
    [low] = answers[-5.0].json()["errors"]
    assert (low["field"], low["location"]) == ("actual", "$.actual")
    assert low["message"] == (
        "median_house_value must be at least 1,000 USD (the dataset's bounds); got -5"
    )
    [high] = answers[1e12].json()["errors"]
    assert high["message"] == (
        "median_house_value must be at most 5,000,000 USD (the dataset's bounds); "
        "got 1,000,000,000,000"
    )
    assert read_feedback_log(settings.object_store)["actual"].tolist() == [1000.0, 5_000_000.0]


def _entry(spec: DatasetSpec, record: dict[str, Any], rows: int, at: datetime) -> Entry:
    return Entry(
        at=at,
        model_name="housing-price",
        model_version="3",
        prediction_ids=[f"id-{at.timestamp()}-{i}" for i in range(rows)],
        predictions=np.arange(rows, dtype=float),
        columns={name: [record[name]] * rows for name in spec.feature_names},
    )


def test_log_queue_overflow_drops_and_counts_never_blocks(
    tmp_path: Path, spec: DatasetSpec, record: dict[str, Any]
) -> None:
    drops: list[int] = []
    writer = SegmentWriter(
        ObjectStore.folder(tmp_path / "predictions"),
        prediction_table(spec),
        max_rows=5,
        flush_rows=100,
        flush_seconds=60,
        on_drop=drops.append,
    )
    now = datetime.now(UTC)
    assert writer.put(_entry(spec, record, 3, now))
    assert not writer.put(_entry(spec, record, 3, now))  # the writer is not even running
    assert writer.put(_entry(spec, record, 2, now))
    assert (writer.dropped, drops) == (3, [3])
    writer.stop()
    assert len(read_prediction_log(ObjectStore.folder(tmp_path))) == 5


def test_overflow_shows_in_metrics(
    settings: Settings, slot: ModelSlot, record: dict[str, Any]
) -> None:
    small = with_api(settings, log_queue_rows=2, log_flush_seconds=60.0)
    with TestClient(create_app(small, slot=slot, follow_registry=False)) as client:
        assert client.post("/v1/predict/batch", json={"records": [record] * 3}).status_code == 200
        text = client.get("/metrics").text
    assert 'lakeloop_api_prediction_log_dropped_rows_total{log="predictions"} 3.0' in text


def test_reader_filters_by_time_and_keeps_the_most_recent(
    tmp_path: Path, spec: DatasetSpec, record: dict[str, Any]
) -> None:
    writer = SegmentWriter(
        ObjectStore.folder(tmp_path / "predictions"),
        prediction_table(spec),
        max_rows=100,
        flush_rows=100,
        flush_seconds=60,
    )
    start = datetime.now(UTC) - timedelta(minutes=10)
    for minutes in (0, 1, 2):
        writer.put(_entry(spec, record, 2, start + timedelta(minutes=minutes)))
        writer.flush()
    assert len(read_prediction_log(ObjectStore.folder(tmp_path))) == 6
    recent = read_prediction_log(ObjectStore.folder(tmp_path), since=start + timedelta(seconds=30))
    assert len(recent) == 4
    assert read_prediction_log(ObjectStore.folder(tmp_path), limit=3)[
        "predicted_at"
    ].is_monotonic_increasing
    assert read_prediction_log(ObjectStore.folder(tmp_path / "nothing-here")).empty


def test_logging_can_be_switched_off(
    settings: Settings, slot: ModelSlot, record: dict[str, Any]
) -> None:
    quiet = with_api(settings, log_predictions=False)
    with TestClient(create_app(quiet, slot=slot, follow_registry=False)) as client:
        assert client.post("/v1/predict", json=record).status_code == 200
    assert read_prediction_log(settings.object_store).empty


# OpenAPI -----------------------------------------------------------------------------------


def test_openapi_documents_every_operation_and_body(client: TestClient, spec: DatasetSpec) -> None:
    document = client.get("/schema/openapi.json").json()
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert operations == {
        "predict",
        "predictBatch",
        "getModel",
        "sendFeedback",
        "reloadModel",
        "health",
        "ready",
        "metrics",
    }
    for path in document["paths"].values():
        for operation in path.values():
            assert operation.get("description"), operation["operationId"]
    schemas = document["components"]["schemas"]
    record = schemas["HouseFeatures"]
    assert set(record["required"]) == set(spec.feature_names)
    assert record["properties"]["households"]["minimum"] == 1
    assert "treated as unknown" in record["properties"]["ocean_proximity"]["description"]
    body = document["paths"]["/v1/predict/batch"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("BatchPredictionRequest")
    assert client.get("/schema/swagger").status_code == 200


def test_the_swagger_page_loads_only_files_the_api_serves(client: TestClient) -> None:
    assert_swagger_page_loads_only_its_own_files(client)


def test_committed_openapi_document_matches_the_code() -> None:
    committed = json.loads(openapi.COMMITTED.read_text())
    generated = json.loads(openapi.render(openapi.generate()))
    assert committed == generated, (
        f"api/openapi.json is out of date with the code: regenerate it with "
        f"`{openapi.REGENERATE}` and commit the result"
    )


@pytest.mark.parametrize("count", [1, 3, 16, 17, 1000])
def test_prediction_ids_are_uuid7_consecutive_within_a_call(count: int) -> None:
    """Small calls are formatted one by one, batches as one array: the same ids either way."""
    first, second = prediction_ids(count), prediction_ids(2)
    assert len(first) == count
    assert all(UUID7.match(value) for value in first + second)
    assert first == sorted(first)
    values = [int(value.replace("-", ""), 16) for value in first]
    assert all(later - earlier == 1 for earlier, later in itertools.pairwise(values))
    assert len(set(first + second)) == count + 2


# Coalescing --------------------------------------------------------------------------------


class CountingModel:
    """A pandas-path model that records how many rows each call got (prediction = population)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        self.calls.append(len(frame))
        return frame["population"].to_numpy(dtype=float)


def test_requests_arriving_together_share_one_model_call(
    spec: DatasetSpec, record: dict[str, Any]
) -> None:
    """Concurrent single-record requests are predicted in one call per model version, each
    with its own answer; a swap between them keeps each on the model it started with."""
    service_types = RequestTypes.for_spec(spec, max_batch=10)
    old, new = CountingModel(), CountingModel()
    old_predictor = Predictor(model=old, name="m", version="1")
    new_predictor = Predictor(model=new, name="m", version="2")
    coalescer = Coalescer()

    async def burst() -> list[float]:
        requests = [
            coalescer.predict(
                old_predictor if index < 3 else new_predictor,
                service_types.record(**(record | {"population": float(index + 1)})),
            )
            for index in range(5)
        ]
        return list(await asyncio.gather(*requests))

    assert asyncio.run(burst()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert (old.calls, new.calls, coalescer.calls) == ([3], [2], 2)


class _Broken:
    def predict(self, frame: pd.DataFrame) -> Any:
        raise RuntimeError("the model exploded")


def test_an_unexpected_error_is_a_500_with_its_traceback_in_the_log(
    settings: Settings, record: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    slot = ModelSlot(Predictor(model=_Broken(), name="housing-price", version="9"))
    with TestClient(create_app(settings, slot=slot, follow_registry=False)) as client:
        answer = client.post("/v1/predict", json=record)
    assert answer.status_code == 500
    assert "exploded" not in answer.text  # nothing internal leaks to the client
    # Litestar's own logger writes the traceback to the process's stderr (the service log).
    logged = capfd.readouterr().err
    assert "Traceback" in logged
    assert "RuntimeError: the model exploded" in logged
