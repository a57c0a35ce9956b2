"""Description changes on a table they were not written for: raw Ames house sales (parcel ids,
coded categories, gaps), alongside the California tests in tests/integration."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from lakeloop import evolution, model, rowkeys
from lakeloop.dataset import DatasetSpec
from lakeloop.settings import TrainingSettings
from tests.utils.real_data import read_ames_as


def ames(version: int, *features: dict[str, Any]) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "ames",
            "version": version,
            "target": {"name": "price"},
            "features": [
                {"name": "living_area", "type": "numeric"},
                {"name": "neighborhood", "type": "categorical", "categories": ["NAmes"]},
                *features,
            ],
        }
    )


FRONTAGE = {"name": "lot_frontage", "type": "numeric", "nullable": True}
V1 = ames(1, FRONTAGE)


@pytest.fixture(scope="module")
def sales() -> pd.DataFrame:
    raw = read_ames_as(
        {
            "Gr Liv Area": "living_area",
            "Neighborhood": "neighborhood",
            "Lot Frontage": "lot_frontage",
            "Year Built": "year_built",
            "SalePrice": "price",
        }
    )
    return raw[V1.columns].head(500)


def test_dropping_a_gappy_column_drops_it_from_older_tables(sales: pd.DataFrame) -> None:
    assert sales["lot_frontage"].isna().any()  # the raw table's gaps
    current = ames(2)
    change = evolution.compare(V1, current)
    assert change.dropped == ("lot_frontage",)
    assert not change.excludes_older_tables
    adapted = evolution.adapt(sales, ingested=V1, current=current)
    assert list(adapted.columns) == current.columns
    pd.testing.assert_series_equal(adapted["price"], sales["price"])


def test_an_added_nullable_code_is_missing_in_older_tables(sales: pd.DataFrame) -> None:
    zoning = {"name": "zoning", "type": "categorical", "categories": ["RL", "RM"], "nullable": True}
    current = ames(2, FRONTAGE, zoning)
    adapted = evolution.adapt(sales, ingested=V1, current=current)
    assert list(adapted.columns) == current.columns
    assert adapted["zoning"].isna().all()
    assert np.array_equal(adapted["lot_frontage"].isna(), sales["lot_frontage"].isna())


def test_an_added_required_year_or_a_retyped_code_leaves_older_tables_out() -> None:
    required = evolution.compare(V1, ames(2, FRONTAGE, {"name": "year_built", "type": "numeric"}))
    assert required.excludes_older_tables
    assert "year_built" in required.exclusion_reason()
    # A code first described as a number, then as a category (as ZIP codes often are).
    as_code = {
        "name": "lot_frontage",
        "type": "categorical",
        "categories": ["60"],
        "nullable": True,
    }
    retyped = evolution.compare(V1, ames(2, as_code))
    assert retyped.retyped == ("lot_frontage",)
    assert "type of lot_frontage changed" in retyped.exclusion_reason()


def test_a_champion_under_the_older_description_is_scored_on_the_new_rows(
    sales: pd.DataFrame,
) -> None:
    """The gate compares a new model with the champion on the same holdout; when the champion was
    trained with a feature the new description dropped, it is scored as its requests will reach
    it: that feature missing, the new ones ignored."""
    champion = model.train(sales, V1, TrainingSettings(n_estimators=20)).pipeline
    zoning = {"name": "zoning", "type": "categorical", "categories": ["RL", "RM"], "nullable": True}
    current = ames(2, zoning)
    rows = evolution.adapt(sales, ingested=V1, current=current).assign(zoning="RL")

    seen, missing = evolution.as_trained_under(rows, current=current, trained=V1)

    assert missing == ["lot_frontage"]
    assert list(seen.columns) == V1.columns
    assert seen["lot_frontage"].isna().all()
    scored = model.score(champion, seen, V1)
    assert np.isfinite(scored["mae"])
    assert scored["mae"] >= model.score(champion, sales, V1)["mae"] * 0.99
    same, none = evolution.as_trained_under(sales, current=V1, trained=V1)
    assert same is sales
    assert none == []


def test_older_rows_keep_their_side_of_the_split_when_the_description_changes(
    sales: pd.DataFrame,
) -> None:
    """Rows are split by their key as ingested: dropping a column must not draw the holdout
    again, or a challenger's holdout would hold rows the champion was fitted on."""
    training = TrainingSettings()
    before = model.split_rows(rowkeys.keyed(sales, V1), V1, training)
    current = ames(2)
    adapted = evolution.adapt(rowkeys.keyed(sales, V1), ingested=V1, current=current)

    after = model.split_rows(adapted, current, training)

    assert set(after.holdout.index) == set(before.holdout.index)
    assert set(after.fit.index) == set(before.fit.index)
    # Hashed again under the new description, the same rows would split another way.
    rehashed = model.split_rows(adapted.reset_index(drop=True), current, training)

    def held_out(split: model.Split) -> set[int]:
        return set(rowkeys.content_hashes(split.holdout, current).tolist())

    assert held_out(rehashed) != held_out(after)
