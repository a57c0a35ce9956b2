"""The synthetic market against the real California housing table it was calibrated on."""

from __future__ import annotations

import pandas as pd
import pytest

from lakeloop.dataset import load_spec
from tests.utils.real_data import read_california
from tooling.market import CLASSES, generate_batch

SPEC = load_spec()
TARGET = SPEC.target.name
CAP = 500_001
NUMERIC = [*SPEC.numeric_features, TARGET]


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    return read_california()


@pytest.fixture(scope="module")
def synthetic(real: pd.DataFrame) -> pd.DataFrame:
    # A different seed from the calibration check, so the figures are not tuned to one draw.
    return generate_batch(rows=len(real), seed=2024)


def test_category_frequencies_within_two_points(
    real: pd.DataFrame, synthetic: pd.DataFrame
) -> None:
    real_share = real["ocean_proximity"].value_counts(normalize=True)
    synthetic_share = synthetic["ocean_proximity"].value_counts(normalize=True)
    for name in CLASSES:
        assert synthetic_share.get(name, 0.0) == pytest.approx(real_share[name], abs=0.02), name


@pytest.mark.parametrize("column", NUMERIC)
def test_numeric_medians_within_fifteen_percent(
    real: pd.DataFrame, synthetic: pd.DataFrame, column: str
) -> None:
    assert synthetic[column].median() == pytest.approx(real[column].median(), rel=0.15)


@pytest.mark.parametrize("name", CLASSES[:4])
def test_per_class_price_medians_within_ten_percent(
    real: pd.DataFrame, synthetic: pd.DataFrame, name: str
) -> None:
    # Location drives price (INLAND is half the coast); ISLAND has 5 real rows, so it is left out.
    real_median = real.loc[real["ocean_proximity"] == name, TARGET].median()
    synthetic_median = synthetic.loc[synthetic["ocean_proximity"] == name, TARGET].median()
    assert synthetic_median == pytest.approx(real_median, rel=0.10)


def test_target_median_and_share_at_the_cap(real: pd.DataFrame, synthetic: pd.DataFrame) -> None:
    assert synthetic[TARGET].median() == pytest.approx(real[TARGET].median(), rel=0.05)
    real_cap, synthetic_cap = (real[TARGET] >= CAP).mean(), (synthetic[TARGET] >= CAP).mean()
    assert real_cap == pytest.approx(0.0468, abs=0.001)
    assert synthetic_cap == pytest.approx(real_cap, abs=0.015)
    assert synthetic[TARGET].max() == CAP


def test_age_spike_at_the_census_cap(real: pd.DataFrame, synthetic: pd.DataFrame) -> None:
    real_spike = (real["housing_median_age"] == 52).mean()
    assert (synthetic["housing_median_age"] == 52).mean() == pytest.approx(real_spike, abs=0.01)


def test_missing_bedrooms_rate(real: pd.DataFrame, synthetic: pd.DataFrame) -> None:
    real_rate = real["total_bedrooms"].isna().mean()
    assert synthetic["total_bedrooms"].isna().mean() == pytest.approx(real_rate, abs=0.003)


def spearman(frame: pd.DataFrame, a: str, b: str) -> float:
    return float(frame[[a, b]].corr(method="spearman").iloc[0, 1])


@pytest.mark.parametrize(
    ("a", "b"),
    [(TARGET, "median_income"), ("total_rooms", "households"), ("population", "households")],
)
def test_rank_correlations_close(
    real: pd.DataFrame, synthetic: pd.DataFrame, a: str, b: str
) -> None:
    assert spearman(synthetic, a, b) == pytest.approx(spearman(real, a, b), abs=0.06)
