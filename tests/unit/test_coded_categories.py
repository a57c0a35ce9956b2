"""Categories written as numbers, on a table nobody tuned to: Ames house sales, whose building class
(`MS SubClass`: 20, 60, 120 ...) is an integer code. Pandas reads such a column as integers from CSV
and Parquet alike; validation, the model and the API must all take it as the listed codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.predictor import ModelSlot, Predictor
from lakeloop import lakefs_client
from lakeloop.dataset import DatasetSpec
from lakeloop.ingest import read_csv, read_source
from lakeloop.model import encoder_of, train
from lakeloop.settings import Settings, TrainingSettings
from lakeloop.stores.prediction_log import read_prediction_log
from lakeloop.validation.checks import validate_frame
from tests.utils.real_data import read_ames_as

CLASSES = [20, 30, 40, 45, 50, 60, 70, 75, 80, 85, 90, 120, 150, 160, 180, 190]


def ames_spec(**building_class: Any) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "ames_coded",
            "version": 1,
            "target": {"name": "price"},
            "features": [
                {"name": "living_area", "type": "numeric", "min": 0},
                {"name": "overall_quality", "type": "numeric", "min": 1, "max": 10},
                {"name": "building_class", "type": "categorical", "categories": CLASSES}
                | building_class,
            ],
        }
    )


SPEC = ames_spec()


@pytest.fixture(scope="module")
def sales() -> pd.DataFrame:
    return read_ames_as(
        {
            "Gr Liv Area": "living_area",
            "Overall Qual": "overall_quality",
            "MS SubClass": "building_class",
            "SalePrice": "price",
        }
    )[SPEC.columns]


def test_categories_listed_as_integers_are_integer_codes_kept_as_digits() -> None:
    feature = SPEC.feature("building_class")
    assert feature.codes == "integer"
    assert feature.categories[:3] == ("20", "30", "40")
    again = DatasetSpec.model_validate_json(SPEC.model_dump_json())
    assert again.digest == SPEC.digest
    with pytest.raises(ValueError, match="not integers: NAmes"):
        ames_spec(categories=["NAmes"], codes="integer")


def test_a_coded_column_passes_from_csv_and_parquet(sales: pd.DataFrame, tmp_path: Path) -> None:
    sales.to_csv(tmp_path / "sales.csv", index=False)
    sales.to_parquet(tmp_path / "sales.parquet", index=False)
    for name in ("sales.csv", "sales.parquet"):
        frame = read_source(tmp_path / name)
        assert pd.api.types.is_integer_dtype(frame["building_class"])  # as pandas reads it
        result = validate_frame(frame, SPEC)
        assert result.success, (name, result.failures)
    # A code that is not listed is named, whichever way it is stored.
    odd = sales.head(50).assign(building_class=[999, *sales["building_class"].head(49)])
    refused = validate_frame(odd, SPEC)
    assert not refused.success
    assert any("building_class" in line and "999" in line for line in refused.failures)


def test_codes_as_integers_text_or_floats_give_the_same_predictions(sales: pd.DataFrame) -> None:
    model = train(sales.head(2000), SPEC, TrainingSettings(n_estimators=30)).pipeline
    rows = sales.tail(300)[SPEC.feature_names]
    as_integers = model.predict(rows)
    as_text = model.predict(rows.assign(building_class=rows["building_class"].astype(str)))
    with_gaps = rows.assign(building_class=rows["building_class"].astype(float))
    with_gaps.iloc[0, with_gaps.columns.get_loc("building_class")] = np.nan
    as_floats = model.predict(with_gaps)
    np.testing.assert_array_equal(as_integers, as_text)
    np.testing.assert_array_equal(as_integers[1:], as_floats[1:])
    # Codes matter: the model did learn the listed classes, not one "unknown" bucket.
    encoded = encoder_of(model).transform(rows)
    assert encoded["building_class"].isna().sum() == 0


def test_codes_written_with_leading_zeros_stay_text_in_csv(tmp_path: Path) -> None:
    """ZIP codes such as 02134: read as numbers they would lose the zero and match nothing."""
    spec = DatasetSpec.model_validate(
        {
            "name": "zips",
            "version": 1,
            "target": {"name": "price"},
            "features": [
                {"name": "zip", "type": "categorical", "categories": ["02134", "02139", "98178"]},
                {"name": "rooms", "type": "numeric"},
            ],
        }
    )
    text = "zip,rooms,price\n02134,3,500000\n98178,4,400000\n02139,2,450000\n"
    (tmp_path / "zips.csv").write_text(text)
    frame = read_source(tmp_path / "zips.csv")
    assert frame["zip"].tolist() == ["02134", "98178", "02139"]
    assert pd.api.types.is_integer_dtype(frame["rooms"])
    assert validate_frame(frame, spec).success
    stored = lakefs_client.parse_table(text.encode(), path="data/zips.csv", ref="c" * 64)
    pd.testing.assert_frame_equal(stored, frame)
    assert read_csv(b"code,price\n7,1\n12,2\n")["code"].tolist() == [7, 12]  # no zeros: numbers


def test_the_api_takes_integer_codes_as_json_integers_or_strings(
    sales: pd.DataFrame, settings: Settings
) -> None:
    model = train(sales.head(2000), SPEC, TrainingSettings(n_estimators=30)).pipeline
    slot = ModelSlot(Predictor(model=model, name="ames", version="1", spec=SPEC))
    record = {"living_area": 1500.0, "overall_quality": 6.0, "building_class": 60}
    with TestClient(create_app(settings, spec=SPEC, slot=slot, follow_registry=False)) as client:
        as_integer = client.post("/v1/predict", json=record).json()
        as_text = client.post("/v1/predict", json=record | {"building_class": "60"}).json()
        unknown = client.post("/v1/predict", json=record | {"building_class": 61}).json()
        batch = client.post(
            "/v1/predict/batch", json={"records": [record, record | {"building_class": "60"}]}
        ).json()
        document = client.get("/schema/openapi.json").json()
    assert as_integer["prediction"] == as_text["prediction"]
    assert batch["predictions"] == [as_integer["prediction"]] * 2
    assert unknown["prediction"] != as_integer["prediction"]  # 61 is no class: treated as unknown
    expected = model.predict(pd.DataFrame([record]))[0]
    assert as_integer["prediction"] == pytest.approx(expected, rel=1e-6)
    field = document["components"]["schemas"]["HouseFeatures"]["properties"]["building_class"]
    assert {option["type"] for option in field["anyOf"]} == {"string", "integer"}
    # The prediction log keeps the codes as text, however they were sent.
    logged = read_prediction_log(settings.object_store)
    assert logged["building_class"].tolist() == ["60", "60", "61", "60", "60"]
