"""Where the real California housing table lives beside the checkout (``../shared``).

Tests that compare with it skip, saying this path, when it is not there; the product never reads it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

CALIFORNIA_CSV = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "datasets"
    / "california_housing"
    / "housing.csv"
)


def read_california() -> pd.DataFrame:
    """The real table, or a skip naming the path it was looked for at."""
    if not CALIFORNIA_CSV.exists():
        pytest.skip(f"real California housing data not found at {CALIFORNIA_CSV}")
    return pd.read_csv(CALIFORNIA_CSV)


AMES_CSV = CALIFORNIA_CSV.parents[1] / "ames_housing" / "AmesHousing.csv"


def read_ames() -> pd.DataFrame:
    """The raw Ames house-sales table (ids, sale dates, coded categories, gaps), or a skip naming
    the path it was looked for at."""
    if not AMES_CSV.exists():
        pytest.skip(f"Ames housing data not found at {AMES_CSV}")
    return pd.read_csv(AMES_CSV)


def read_ames_as(names: dict[str, str]) -> pd.DataFrame:
    """Those Ames columns only, renamed (raw name → the test's name)."""
    return read_ames().rename(columns=names)[list(names.values())]
