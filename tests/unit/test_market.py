"""The synthetic housing market: seeded, in schema, calibrated, and each scenario does its job."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import r2_score
from xgboost import XGBRegressor

from lakeloop.dataset import load_spec
from tooling.market import (
    CLASSES,
    MISSING_BEDROOMS,
    NEW_REGION_LATITUDE,
    NEW_REGION_LONGITUDE,
    NEW_REGION_MAX_AGE,
    Scenario,
    generate_batch,
)

SPEC = load_spec()
ROWS = 10_000


@pytest.fixture(scope="module")
def baseline() -> pd.DataFrame:
    return generate_batch(rows=ROWS, seed=7)


def violations(frame: pd.DataFrame) -> pd.Series:
    """Per row: does any feature break the dataset description (null, range, category)?"""
    bad = pd.Series(False, index=frame.index)
    for feature in SPEC.features:
        column = frame[feature.name]
        if not feature.nullable:
            bad |= column.isna()
        if feature.type == "categorical":
            bad |= column.notna() & ~column.isin(feature.categories)
        else:
            bad |= column.notna() & ~column.between(feature.min, feature.max)
    return bad


def test_same_seed_gives_the_same_frame_byte_for_byte() -> None:
    scenario = Scenario.preset("corrupt")
    first = generate_batch(rows=500, seed=3, scenario=scenario)
    second = generate_batch(rows=500, seed=3, scenario=scenario)
    pd.testing.assert_frame_equal(first, second)
    assert first.to_csv(index=False) == second.to_csv(index=False)


def test_different_seed_gives_a_different_frame() -> None:
    first = generate_batch(rows=500, seed=3)
    second = generate_batch(rows=500, seed=4)
    assert not first.equals(second)
    assert (first["median_income"] != second["median_income"]).mean() > 0.9


def test_schema_order_and_dtypes(baseline: pd.DataFrame) -> None:
    assert list(baseline.columns) == SPEC.columns
    for name in [*SPEC.numeric_features, SPEC.target.name]:
        assert baseline[name].dtype == np.float64, name
    for name in SPEC.categorical_features:
        assert pd.api.types.is_object_dtype(baseline[name]) or pd.api.types.is_string_dtype(
            baseline[name]
        )
    assert len(baseline) == ROWS
    assert generate_batch(rows=0, seed=1).columns.tolist() == SPEC.columns


def test_baseline_respects_every_bound_and_category(baseline: pd.DataFrame) -> None:
    assert not violations(baseline).any()
    target = baseline[SPEC.target.name]
    assert target.notna().all()
    assert target.between(SPEC.target.min, SPEC.target.max).all()
    assert set(baseline["ocean_proximity"]) <= set(CLASSES)
    # Counts are whole numbers and a block group has no more bedrooms than rooms.
    counts = baseline[["total_rooms", "total_bedrooms", "population", "households"]]
    assert (counts.dropna() % 1 == 0).all().all()
    assert (
        baseline["total_bedrooms"].dropna() <= baseline["total_rooms"][counts.notna().all(1)]
    ).all()


def test_baseline_nulls_only_in_bedrooms_at_the_calibrated_rate(baseline: pd.DataFrame) -> None:
    nulls = baseline.isna().sum()
    assert nulls.drop("total_bedrooms").sum() == 0
    assert pytest.approx(207 / 20640, rel=0.01) == MISSING_BEDROOMS
    assert nulls["total_bedrooms"] / ROWS == pytest.approx(MISSING_BEDROOMS, abs=0.004)


def test_income_multiplier_raises_mean_income_by_about_that_factor(baseline: pd.DataFrame) -> None:
    shifted = generate_batch(rows=ROWS, seed=7, scenario=Scenario(income_multiplier=1.3))
    ratio = shifted["median_income"].mean() / baseline["median_income"].mean()
    assert ratio == pytest.approx(1.3, abs=0.02)
    # Covariate shift: richer districts, so prices follow the same relationship upwards.
    assert shifted["median_house_value"].median() > baseline["median_house_value"].median() * 1.1
    assert not violations(shifted).any()


def test_price_inflation_raises_prices_for_the_same_features(baseline: pd.DataFrame) -> None:
    inflated = generate_batch(rows=ROWS, seed=7, scenario=Scenario.preset("inflation"))
    features = SPEC.feature_names
    pd.testing.assert_frame_equal(inflated[features], baseline[features])
    before, after = baseline["median_house_value"], inflated["median_house_value"]
    uncapped = after < 500_001
    assert (after >= before).all()
    assert (after[uncapped] / before[uncapped]).median() == pytest.approx(1.25, abs=0.005)
    assert (after >= 500_001).mean() > (before >= 500_001).mean()


def in_new_region(frame: pd.DataFrame) -> pd.Series:
    return (
        frame["longitude"].between(*NEW_REGION_LONGITUDE)
        & frame["latitude"].between(*NEW_REGION_LATITUDE)
        & (frame["housing_median_age"] <= NEW_REGION_MAX_AGE)
        & (frame["ocean_proximity"] == "INLAND")
    )


def test_new_region_share_moves_that_share_of_rows_to_the_documented_region(
    baseline: pd.DataFrame,
) -> None:
    moved = generate_batch(rows=ROWS, seed=7, scenario=Scenario.preset("new-region"))
    assert in_new_region(baseline).mean() < 0.005
    assert in_new_region(moved).mean() == pytest.approx(0.3, abs=0.01)
    assert moved["latitude"].mean() > baseline["latitude"].mean() + 1.0
    assert not violations(moved).any()
    assert moved["median_house_value"].notna().all()


def test_corrupt_share_breaks_that_share_of_rows_in_the_documented_ways() -> None:
    corrupt = generate_batch(rows=ROWS, seed=7, scenario=Scenario(corrupt_share=0.08))
    bad = violations(corrupt)
    assert bad.mean() == pytest.approx(0.08, abs=0.002)
    damaged = corrupt[bad]
    counts = damaged[["total_rooms", "total_bedrooms", "population", "households"]]
    non_nullable = [f.name for f in SPEC.features if not f.nullable]
    kinds = {
        "null": damaged[non_nullable].isna().any(axis=1),
        "negative_count": (counts < 0).any(axis=1),
        "unknown_category": damaged["ocean_proximity"].notna()
        & ~damaged["ocean_proximity"].isin(CLASSES),
        "out_of_bounds": (damaged["longitude"] > 0)
        | (damaged["latitude"] > 50)
        | (damaged["housing_median_age"] > 100)
        | (damaged["median_income"] > 30),
    }
    for kind, hit in kinds.items():
        assert hit.mean() == pytest.approx(0.25, abs=0.07), kind
    assert (sum(hit.astype(int) for hit in kinds.values()) == 1).all()


def test_zero_corrupt_share_breaks_nothing() -> None:
    for name in Scenario.PRESETS:
        if name != "corrupt":
            frame = generate_batch(rows=2_000, seed=11, scenario=Scenario.preset(name))
            assert not violations(frame).any(), name
    assert violations(
        generate_batch(rows=2_000, seed=11, scenario=Scenario.preset("corrupt"))
    ).any()


def test_presets_and_validation() -> None:
    assert Scenario.preset("baseline") == Scenario()
    assert Scenario.preset("income-shift").income_multiplier == 1.3
    with pytest.raises(ValueError, match="unknown scenario"):
        Scenario.preset("boom")
    with pytest.raises(ValueError, match="between 0 and 1"):
        Scenario(corrupt_share=1.5)
    with pytest.raises(ValueError, match="positive"):
        Scenario(price_inflation=0)


def test_xgboost_learns_the_market() -> None:
    frame = generate_batch(rows=5_000, seed=21)
    x = frame.drop(columns="median_house_value")
    x["ocean_proximity"] = x["ocean_proximity"].astype(pd.CategoricalDtype(CLASSES))
    y = frame["median_house_value"]
    model = XGBRegressor(n_estimators=200, enable_categorical=True, tree_method="hist")
    model.fit(x.iloc[:4_000], y.iloc[:4_000])
    assert r2_score(y.iloc[4_000:], model.predict(x.iloc[4_000:])) > 0.7
