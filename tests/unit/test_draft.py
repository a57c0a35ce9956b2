"""`lakeloop dataset init` on tables it was not written for: the raw Ames file as published, and a
small table with the awkward columns real exports carry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lakeloop import model
from lakeloop.cli import app
from lakeloop.dataset import load_spec
from lakeloop.draft import draft
from lakeloop.ingest import read_source
from lakeloop.settings import Settings, TrainingSettings
from tests.utils.real_data import AMES_CSV, read_ames
from validation.checks import validate_frame


def test_the_raw_ames_file_drafts_a_description_that_trains_a_servable_model(
    settings: Settings, tmp_path: Path
) -> None:
    """Raw file → `dataset init` → a description that accepts the file, with no column dropped
    or renamed and no threshold set by hand → a model the gate would serve."""
    read_ames()  # skips, naming the path, where the shared data is absent
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
