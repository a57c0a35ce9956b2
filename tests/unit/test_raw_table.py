"""A table as published, not cut down by hand: the raw Ames house-sales file (82 columns, two id
columns, coded classes, gaps) described with its ids and the columns it does not use yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.predictor import ModelSlot, Predictor
from lakeloop import evolution, model, rowkeys
from lakeloop.dataset import DatasetSpec
from lakeloop.ingest import read_source
from lakeloop.loop import feedback_headers
from lakeloop.settings import Settings, TrainingSettings
from lakeloop.stores.prediction_log import read_feedback_log, read_prediction_log
from lakeloop.validation.checks import validate_frame
from lakeloop.validation.history import record_fingerprints
from monitoring.window import champion_window, labelled_rows, with_feedback
from tests.utils.real_data import read_ames

FEATURES = ["Neighborhood", "Fireplaces", "Foundation"]
CLASSES = [20, 30, 40, 45, 50, 60, 70, 75, 80, 85, 90, 120, 150, 160, 180, 190]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The file as published, read the way lakeloop reads every CSV."""
    path = tmp_path_factory.mktemp("ames") / "AmesHousing.csv"
    read_ames().to_csv(path, index=False)
    return read_source(Path(path))


def describe(raw: pd.DataFrame, **changes: Any) -> DatasetSpec:
    used = {"Order", "PID", "SalePrice", *FEATURES}
    return DatasetSpec.model_validate(
        {
            "name": "ames_raw",
            "version": 1,
            "target": {"name": "SalePrice", "min": 1},
            "ids": ["Order", "PID"],
            "features": [
                {
                    "name": "Neighborhood",
                    "type": "categorical",
                    "categories": sorted(raw["Neighborhood"].unique()),
                },
                {"name": "Fireplaces", "type": "numeric", "min": 0, "max": 10},
                {
                    "name": "Foundation",
                    "type": "categorical",
                    "categories": sorted(raw["Foundation"].unique()),
                },
            ],
            "ignore": [column for column in raw.columns if column not in used],
        }
        | changes
    )


def test_the_published_table_passes_with_its_ids_and_unused_columns_declared(
    raw: pd.DataFrame,
) -> None:
    spec = describe(raw)
    assert len(spec.stored_columns) == len(raw.columns) == 82
    result = validate_frame(raw, spec)
    assert result.success, result.failures
    # Without the ids and the unused columns declared, the same file is refused naming them.
    bare = describe(raw, ids=[], ignore=[])
    refused = validate_frame(raw, bare)
    assert not refused.success
    assert any("PID" in line and "Order" in line for line in refused.failures)


def test_a_declared_column_missing_from_a_table_is_named(raw: pd.DataFrame) -> None:
    result = validate_frame(raw.drop(columns=["PID", "Misc Feature"]), describe(raw))
    assert not result.success
    text = "\n".join(result.failures)
    assert "PID" in text
    assert "Misc Feature" in text


def test_a_column_declared_twice_is_refused_naming_both_roles(raw: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"Fireplaces \(feature and ignored\)"):
        describe(raw, ignore=["Fireplaces"])
    with pytest.raises(ValueError, match=r"PID \(id and ignored\)"):
        describe(raw, ignore=["PID"])
    with pytest.raises(ValueError, match=r"Fireplaces \(id and feature\)"):
        describe(raw, ids=["Order", "PID", "Fireplaces"])


def test_a_table_without_the_described_time_column_is_refused_naming_it(
    raw: pd.DataFrame,
) -> None:
    """The description names a sale-month column the table does not have: the checks say which,
    and the rest of the table is still judged (nothing crashes on the missing column)."""
    result = validate_frame(raw.drop(columns=["Mo Sold"]).head(200), dated(raw))
    assert not result.success
    assert any("Mo Sold" in line for line in result.failures), result.failures


def test_ids_make_the_record_and_train_nothing(raw: pd.DataFrame) -> None:
    """A resent sale (same ids) is the same record; two sales alike in every feature and price
    but with their own ids are not. The model learns from the features alone."""
    spec = describe(raw)
    rows = raw.head(200)
    fingerprints, _ = record_fingerprints(rows, spec)
    again, _ = record_fingerprints(rows.copy(), spec)
    assert (fingerprints == again).all()
    twin = rows.head(1).assign(Order=99_999, PID=1)
    twin_print, _ = record_fingerprints(twin, spec)
    assert twin_print[0] != fingerprints[0]

    frame = evolution.adapt(rowkeys.keyed(raw, spec), ingested=spec, current=spec)
    trained = model.train(frame, spec, TrainingSettings(n_estimators=20))
    assert set(model.regressor_of(trained.pipeline).get_booster().feature_names) == set(FEATURES)
    # Under a later description that no longer ignores the unused columns (they were dropped from
    # the export), older tables keep their ids for training and lose only the ignored columns.
    later = describe(raw, version=2, ignore=[])
    adapted = evolution.adapt(raw, ingested=spec, current=later)
    assert list(adapted.columns) == later.record_columns


SOLD = {"year": "Yr Sold", "month": "Mo Sold"}


def dated(raw: pd.DataFrame) -> DatasetSpec:
    plain = describe(raw)
    return describe(
        raw, event_time=SOLD, ignore=[c for c in plain.ignore if c not in SOLD.values()]
    )


def test_dated_sales_are_split_by_time_whatever_the_file_order(raw: pd.DataFrame) -> None:
    """The model is judged as it is used: on the latest sales, having learned from older ones."""
    spec = dated(raw)
    assert validate_frame(raw, spec).success
    training = TrainingSettings()
    split = model.split_rows(raw, spec, training)
    sold = {
        name: spec.event_time.parse(getattr(split, name))  # type: ignore[union-attr]
        for name in ("fit", "stop", "holdout")
    }
    assert sold["fit"].max() <= sold["stop"].min()
    assert sold["stop"].max() <= sold["holdout"].min()  # no holdout sale older than a trained one
    assert len(split.holdout) == round(len(raw) * training.holdout_fraction)
    shuffled = model.split_rows(raw.sample(frac=1, random_state=3), spec, training)
    assert set(shuffled.holdout["Order"]) == set(split.holdout["Order"])
    assert set(shuffled.fit["Order"]) == set(split.fit["Order"])
    trained = model.train(raw, spec, TrainingSettings(n_estimators=20))
    assert "Yr Sold" not in model.regressor_of(trained.pipeline).get_booster().feature_names


def test_sale_times_that_do_not_parse_or_lie_ahead_are_refused_naming_rows(
    raw: pd.DataFrame,
) -> None:
    spec = dated(raw)
    bad = raw.head(100).copy()
    bad.loc[bad.index[7], "Mo Sold"] = 13
    ahead = pd.Timestamp.now().year + 2
    bad.loc[bad.index[42], "Yr Sold"] = ahead
    result = validate_frame(bad, spec)
    assert not result.success
    lines = "\n".join(result.failures)
    assert "1 rows have no time in a year and a month (1-12): rows 7 (" in lines
    assert "1 rows are after now" in lines
    assert f"rows 42 ({ahead}" in lines


def test_a_time_column_with_a_format(raw: pd.DataFrame) -> None:
    frame = raw.head(50).assign(sold_at=lambda f: f["Yr Sold"].astype(str) + "/06/15")
    spec = describe(raw, event_time={"column": "sold_at", "format": "%Y/%m/%d"})
    frame = frame[spec.stored_columns]
    assert validate_frame(frame, spec).success
    frame.loc[frame.index[3], "sold_at"] = "15.06.2008"
    [line] = validate_frame(frame, spec).failures
    assert "have no time in format %Y/%m/%d: rows 3 (15.06.2008)" in line
    with pytest.raises(ValueError, match="either column"):
        describe(raw, event_time={"format": "%Y"})
    with pytest.raises(ValueError, match=r"Yr Sold \(event time and ignored\)"):
        describe(raw, event_time=SOLD)


def test_features_keep_their_published_names_through_training_and_the_api(
    raw: pd.DataFrame, settings: Settings
) -> None:
    """`Gr Liv Area`, `MS SubClass`, `1st Flr SF`: no column renamed by hand, in training, in
    the API's requests and errors, in its OpenAPI document and in the prediction log."""
    named = [
        {"name": "Gr Liv Area", "type": "numeric", "min": 0},
        {"name": "1st Flr SF", "type": "numeric", "min": 0},
        {"name": "MS SubClass", "type": "categorical", "categories": CLASSES},
        {"name": "Lot Frontage", "type": "numeric", "nullable": True},
    ]
    used = {"Order", "PID", "SalePrice", *(feature["name"] for feature in named)}
    spec = describe(
        raw, features=named, ignore=[column for column in raw.columns if column not in used]
    )
    assert validate_frame(raw, spec).success
    pipeline = model.train(raw, spec, TrainingSettings(n_estimators=20)).pipeline
    record = {"Gr Liv Area": 1500, "1st Flr SF": 900, "MS SubClass": 60, "Lot Frontage": None}
    expected = float(pipeline.predict(pd.DataFrame([record]))[0])
    slot = ModelSlot(Predictor(model=pipeline, name="ames", version="1", spec=spec))
    app = create_app(settings, spec=spec, slot=slot, follow_registry=False)
    # The record a new champion is warmed with before it is swapped in (by the registry watcher).
    slot.current.warm(app.state.service.example(slot.current))  # type: ignore[union-attr]
    with TestClient(app) as client:
        one = client.post("/v1/predict", json=record).json()
        columns = {name: [value] * 2 for name, value in record.items()}
        batch = client.post("/v1/predict/batch", json={"columns": columns}).json()
        records = client.post("/v1/predict/batch", json={"records": [record] * 3}).json()
        missing = client.post(
            "/v1/predict", json={k: v for k, v in record.items() if k != "1st Flr SF"}
        )
        document = client.get("/schema/openapi.json").json()
    assert one["prediction"] == pytest.approx(expected, rel=1e-6)
    assert batch["predictions"] == pytest.approx([expected] * 2, rel=1e-6)
    assert records["predictions"] == pytest.approx([expected] * 3, rel=1e-6)
    assert missing.status_code == 422
    assert [error["field"] for error in missing.json()["errors"]] == ["1st Flr SF"]
    documented = document["components"]["schemas"]["HouseFeatures"]
    assert set(documented["properties"]) == {*spec.feature_names, "Order", "PID"}
    assert set(documented["required"]) == set(spec.feature_names)  # ids are optional
    logged = read_prediction_log(settings.object_store)
    assert logged["Gr Liv Area"].tolist() == [1500.0] * 6
    assert logged["MS SubClass"].tolist() == ["60"] * 6


def test_names_the_api_cannot_tell_apart_are_refused(raw: pd.DataFrame) -> None:
    clash = [
        {"name": "Lot Area", "type": "numeric"},
        {"name": "Lot_Area", "type": "numeric"},
    ]
    with pytest.raises(ValueError, match="Lot Area / Lot_Area"):
        describe(raw, features=clash, ignore=[])


def test_a_house_sold_twice_is_never_on_both_sides_of_a_split(raw: pd.DataFrame) -> None:
    """Ames sells each parcel once; resell 300 of them a year later (new order numbers, new
    prices): with `group: PID` a parcel is learned or judged, never both, by time or by hash."""
    resold = raw.sample(300, random_state=5).assign(
        Order=lambda f: f["Order"] + 10_000,
        SalePrice=lambda f: f["SalePrice"] * 1.05,
    )
    resold["Yr Sold"] = resold["Yr Sold"].clip(upper=2009) + 1
    sales = pd.concat([raw, resold], ignore_index=True)
    training = TrainingSettings()

    def straddling(split: model.Split) -> set[Any]:
        learned = set(split.fit["PID"]) | set(split.stop["PID"])
        return learned & set(split.holdout["PID"])

    for spec in (dated(raw), describe(raw)):
        assert straddling(model.split_rows(sales, spec, training))  # without a group, they do
        grouped = spec.model_copy(update={"group": "PID"})
        grouped = DatasetSpec.model_validate(grouped.model_dump())
        split = model.split_rows(sales, grouped, training)
        assert not straddling(split)
        assert not set(split.fit["PID"]) & set(split.stop["PID"])
        assert abs(len(split.holdout) - len(sales) * training.holdout_fraction) < 0.02 * len(sales)
    with pytest.raises(ValueError, match="group 'Misc Feature' must be an id"):
        describe(raw, group="Misc Feature")


def test_a_record_sent_with_its_own_ids_is_echoed_logged_and_priced_by_them(
    raw: pd.DataFrame, settings: Settings
) -> None:
    """A client that knows its records (a parcel id) sends it with the features, gets it back,
    and later reports the sale price by it, not by our prediction id; the priced rows become a
    training table that passes the same checks as any batch (ids, sale month, every column)."""
    spec = dated(raw)
    pipeline = model.train(raw, spec, TrainingSettings(n_estimators=20)).pipeline
    slot = ModelSlot(Predictor(model=pipeline, name="ames", version="1", spec=spec))
    app = create_app(settings, spec=spec, slot=slot, follow_registry=False)
    house = raw.iloc[0]
    record: dict[str, Any] = {
        "Neighborhood": house["Neighborhood"],
        "Fireplaces": float(house["Fireplaces"]),
        "Foundation": house["Foundation"],
    }
    with TestClient(app) as client:
        client.headers.update(feedback_headers(settings))
        bare = client.post("/v1/predict", json=record).json()
        one = client.post("/v1/predict", json=record | {"PID": 526301100}).json()
        dated_sale = client.post(
            "/v1/predict", json=record | {"PID": 526350040, "Yr Sold": 2009, "Mo Sold": 5}
        ).json()
        batch = client.post(
            "/v1/predict/batch",
            json={
                "columns": {name: [value] * 2 for name, value in record.items()}
                | {"PID": ["0526301100", None]}
            },
        ).json()
        wrong_type = client.post("/v1/predict", json=record | {"PID": [1]})
        priced = client.post("/v1/feedback", json={"ids": {"PID": 526301100}, "actual": 215000})
        priced_dated = client.post(
            "/v1/feedback", json={"ids": {"PID": 526350040}, "actual": 105000}
        )
        by_prediction = client.post(
            "/v1/feedback", json={"prediction_id": bare["prediction_id"], "actual": 172000}
        )
        unknown_id = client.post("/v1/feedback", json={"ids": {"Parcel": 1}, "actual": 1.0})
        both = client.post(
            "/v1/feedback",
            json={"prediction_id": bare["prediction_id"], "ids": {"PID": 1}, "actual": 1.0},
        )
        neither = client.post("/v1/feedback", json={"actual": 1.0})
    assert "ids" not in bare
    assert one["ids"] == {"PID": 526301100}
    assert one["prediction"] == pytest.approx(bare["prediction"])  # ids never predict
    assert dated_sale["ids"] == {"PID": 526350040}  # the sale's time is logged, not echoed
    assert batch["ids"] == [{"PID": "0526301100"}, {}]
    assert wrong_type.status_code == 422
    assert wrong_type.json()["errors"][0]["field"] == "PID"
    assert priced.status_code == priced_dated.status_code == by_prediction.status_code == 202
    assert priced.json() == {"status": "accepted", "ids": {"PID": 526301100}, "client": "local"}
    assert unknown_id.status_code == 422
    assert "not an id column of the dataset (id columns: Order, PID)" in unknown_id.text
    assert both.status_code == neither.status_code == 422
    assert "exactly one of `prediction_id` or `ids`" in neither.text

    log = read_prediction_log(settings.object_store)
    assert log["PID"].tolist() == [None, "526301100", "526350040", "0526301100", None]
    assert log["Yr Sold"].tolist() == [None, None, "2009", None, None]
    joined = with_feedback(log, read_feedback_log(settings.object_store), spec=spec)
    assert joined["SalePrice"].tolist()[:3] == [172000.0, 215000.0, 105000.0]
    assert joined["SalePrice"].isna().tolist()[3:] == [True, True]  # "0526301100" is another id

    # Windowed by sale time (Ames' year and month, logged as the request sent them): the one sale
    # dated 2009 is the oldest, whatever its prediction time; the undated ones count as now.
    by_sale, _ = champion_window(
        settings.object_store, spec, model_version="1", rows=10, by_event_time=True
    )
    assert by_sale["PID"].tolist()[0] == "526350040"
    newest, _ = champion_window(
        settings.object_store, spec, model_version="1", rows=4, by_event_time=True
    )
    assert "526350040" not in newest["PID"].tolist()

    rows = labelled_rows(joined, spec)
    assert list(rows.columns) == spec.stored_columns
    assert rows["PID"].tolist() == [pd.NA, 526301100, 526350040]
    assert (rows.loc[2, "Yr Sold"], rows.loc[2, "Mo Sold"]) == (2009, 5)  # as the request said
    reported = read_feedback_log(settings.object_store)["received_at"].iloc[0]
    assert (rows.loc[1, "Yr Sold"], rows.loc[1, "Mo Sold"]) == (reported.year, reported.month)
    result = validate_frame(rows, spec)
    assert result.success, result.failures
