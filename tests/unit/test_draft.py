"""`lakeloop dataset init` on tables it was not written for: the raw Ames file as published, and a
small table with the awkward columns real exports carry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lakeloop import model
from lakeloop.dataset import load_spec
from lakeloop.draft import draft
from lakeloop.ingest import read_source
from lakeloop.settings import Settings, TrainingSettings
from lakeloop.validation.checks import validate_frame
from tests.utils.real_data import AMES_CSV, shipped
from tooling.cli import app


def test_the_raw_ames_file_drafts_a_description_that_trains_a_servable_model(
    settings: Settings, tmp_path: Path
) -> None:
    """Raw file → `dataset init` → a description that accepts the file, with no column dropped
    or renamed and no threshold set by hand → a model the gate would serve."""
    shipped(AMES_CSV)  # fails, naming the path, where the shared data is absent
    table = tmp_path / "AmesHousing.csv"
    shutil.copy(AMES_CSV, table)
    runner = CliRunner()
    answer = runner.invoke(app, ["dataset", "init", str(table), "--target", "SalePrice"])
    assert answer.exit_code == 0, answer.output
    written = tmp_path / "AmesHousing.yaml"
    assert "ids: Order, PID" in answer.output
    assert "MS SubClass: integer codes" in answer.output
    assert written.read_text().startswith("# Drafted by `lakeloop dataset init`")

    spec = load_spec(written)
    assert spec.ids == ("Order", "PID")
    assert spec.event_time is not None
    assert spec.event_time.columns == ["Yr Sold", "Mo Sold"]
    assert spec.feature("MS SubClass").codes == "integer"
    assert spec.feature("Lot Frontage").nullable
    assert spec.target.thresholds.max_mae is None
    frame = read_source(table)
    assert len(spec.stored_columns) == len(frame.columns)
    assert validate_frame(frame, spec).success

    trained = model.train(frame, spec, TrainingSettings(n_estimators=60))
    bars = model.thresholds(spec, TrainingSettings())
    assert model.gate_failures(trained.metrics, TrainingSettings(), bars=bars) == []

    again = runner.invoke(app, ["dataset", "init", str(table), "--target", "SalePrice"])
    assert again.exit_code == 2  # an existing description is never overwritten
    assert "exists" in again.output


def test_awkward_columns_are_ignored_with_the_reason() -> None:
    frame = pd.DataFrame(
        {
            "listing_id": [f"L{i:04d}" for i in range(300)],
            "sold_at": pd.date_range("2025-01-01", periods=300, freq="D").strftime("%Y-%m-%d"),
            "notes": [f"free text {i}" for i in range(300)],
            "garage": [True, False] * 150,
            "area [m2]": range(300),
            "zip_code": ["02134", "98178", "02139"] * 100,
            "rooms": [1, 2, 3, None] * 75,
            "price": [100_000.0 + 10 * i for i in range(300)],
        }
    )
    drafted = draft(frame, target="price", name="listings")
    spec = drafted.spec
    assert spec.ids == ("listing_id",)
    assert spec.event_time is not None
    assert spec.event_time.column == "sold_at"
    assert set(spec.ignore) == {"notes", "garage", "area [m2]"}
    assert spec.feature("zip_code").codes == "integer"
    assert spec.feature("rooms").nullable
    notes = "\n".join(drafted.notes)
    assert "notes (free text (300 distinct values))" in notes
    assert "area [m2] (XGBoost refuses [, ] and <" in notes
    assert validate_frame(frame, spec).success
    with pytest.raises(ValueError, match="'listing_id' is not numeric"):
        draft(frame, target="listing_id", name="listings")


def test_dates_in_any_column_and_rows_without_a_target_are_drafted_not_refused() -> None:
    """A car table (model year written as a date, a second date, eight cars with no mileage):
    the date becomes the event time whatever its name, the second date is not a feature, and the
    unlabelled rows are allowed in a batch but never trained on."""
    rows = 400
    frame = pd.DataFrame(
        {
            "Name": [f"car {i}" for i in range(rows)],
            "Miles_per_Gallon": [None if i % 50 == 7 else 15.0 + (i % 40) for i in range(rows)],
            "Horsepower": [80.0 + i % 120 for i in range(rows)],
            "Origin": ["USA", "Japan", "Europe", "USA"] * (rows // 4),
            "Year": [f"{1970 + i % 13}-01-01" for i in range(rows)],
            "Registered": [f"{1990 + i % 20}/03/{1 + i % 28:02d}" for i in range(rows)],
        }
    )
    drafted = draft(frame, target="Miles_per_Gallon", name="cars")
    spec = drafted.spec
    assert spec.event_time is not None
    assert spec.event_time.column == "Year"
    assert "Registered" in spec.ignore
    assert "Year" not in spec.feature_names
    assert spec.target.max_missing == 0.04  # 2 % seen, twice that allowed
    notes = "\n".join(drafted.notes)
    assert "8 rows have no Miles_per_Gallon (kept, never trained on)" in notes
    assert "Registered (dates: a second time, not a feature" in notes
    result = validate_frame(frame, spec)
    assert result.success, result.failures
    trained = model.train(frame, spec, TrainingSettings(n_estimators=10))
    assert trained.train_rows + trained.holdout_rows == rows - 8
    # More unlabelled rows than the description allows are refused, naming the target.
    unlabelled = frame.assign(Miles_per_Gallon=frame["Miles_per_Gallon"].where(frame.index > 40))
    refused = validate_frame(unlabelled, spec)
    assert any("Miles_per_Gallon" in line for line in refused.failures)
