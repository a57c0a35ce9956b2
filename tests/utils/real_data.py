"""The real public tables shipped beside the checkout (``../shared/datasets``): the California
housing table the synthetic market is calibrated on, and the raw Ames house-sales file.

They are part of the test suite's inputs (CI checks ``../shared`` out beside the repository), so a
missing file fails the test that needs it, naming the path; it is never a skip. The product never
reads them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
CALIFORNIA_CSV = DATASETS / "california_housing" / "housing.csv"
AMES_CSV = DATASETS / "ames_housing" / "AmesHousing.csv"


def shipped(path: Path) -> Path:
    """``path``, or a failure naming where the shipped table was looked for."""
    if not path.is_file():
        pytest.fail(
            f"the real table {path.name} is not at {path}: the test data is shipped in "
            f"../shared/datasets beside the repository; check it out there",
            pytrace=False,
        )
    return path


def read_california() -> pd.DataFrame:
    """The real California housing table (20,640 census block groups), as published."""
    return pd.read_csv(shipped(CALIFORNIA_CSV))


def read_ames() -> pd.DataFrame:
    """The raw Ames house-sales table (ids, sale dates, coded categories, gaps), as published."""
    return pd.read_csv(shipped(AMES_CSV))


def read_ames_as(names: dict[str, str]) -> pd.DataFrame:
    """Those Ames columns only, renamed (raw name → the test's name)."""
    return read_ames().rename(columns=names)[list(names.values())]
