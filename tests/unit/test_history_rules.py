"""Rules across the history, on a table they were not written for: Ames house sales (a parcel id,
coded categories, gaps), alongside the California example."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lakeloop.dataset import DatasetSpec
from lakeloop.validation.history import RECORD, all_fingerprints, fingerprints, history_findings
from tests.utils.real_data import read_ames


def ames_spec(*, unique: dict[str, object]) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "ames",
            "version": 1,
            "target": {"name": "price"},
            "features": [
                {"name": "pid", "type": "numeric"},
                {"name": "living_area", "type": "numeric"},
                {"name": "lot_frontage", "type": "numeric", "nullable": True},
                {"name": "neighborhood", "type": "categorical", "categories": ["NAmes"]},
            ],
            "checks": [{"rule": "unique", **unique}],
        }
    )


@pytest.fixture(scope="module")
def ames() -> pd.DataFrame:
    raw = read_ames()
    return raw.rename(
        columns={
            "PID": "pid",
            "Gr Liv Area": "living_area",
            "Lot Frontage": "lot_frontage",
            "Neighborhood": "neighborhood",
            "SalePrice": "price",
        }
    )[["pid", "living_area", "lot_frontage", "neighborhood", "price"]]


def test_unique_spans_the_history_by_default() -> None:
    spec = ames_spec(unique={"columns": ["pid"]})
    assert [check.scope for check in spec.checks] == ["history"]
    assert spec.history_checks == spec.checks


def test_a_row_rule_cannot_claim_the_history() -> None:
    with pytest.raises(ValueError, match="only unique can have scope: history"):
        DatasetSpec.model_validate(
            {
                "name": "x",
                "version": 1,
                "target": {"name": "y"},
                "features": [{"name": "a", "type": "numeric"}],
                "checks": [{"rule": "between", "column": "a", "min": 0, "scope": "history"}],
            }
        )


def test_a_resale_under_the_same_parcel_id_is_caught_across_tables(ames: pd.DataFrame) -> None:
    spec = ames_spec(unique={"columns": ["pid"]})
    first, second = ames.iloc[:1000], ames.iloc[900:1200].copy()
    # The later export wrote ids as floats (a gap elsewhere made the column float): same ids.
    second["pid"] = second["pid"].astype("float64")
    second["living_area"] += 1  # a different sale, same parcel: still a key repeat
    tables = {
        "data/1/a.csv": all_fingerprints(first, spec),
        "data/2/b.csv": all_fingerprints(second, spec),
    }
    [finding] = history_findings(tables, spec)
    assert finding.table == "data/2/b.csv"
    assert finding.unexpected_count == 100
    assert "100 of its 300 rows repeat rows of data/1/a.csv" in finding.observed
    assert finding.column == "pid"
    assert finding.scope == "history"
    assert "across the history" in finding.line


def test_batch_scope_ignores_other_tables(ames: pd.DataFrame) -> None:
    spec = ames_spec(unique={"columns": ["pid"], "scope": "batch"})
    tables = {
        "data/1/a.csv": all_fingerprints(ames.iloc[:500], spec),
        "data/2/b.csv": all_fingerprints(ames.iloc[:500], spec),
    }
    assert history_findings(tables, spec) == []


def test_mostly_tolerates_a_few_repeats_across_tables(ames: pd.DataFrame) -> None:
    spec = ames_spec(unique={"columns": ["pid"], "mostly": 0.99})
    tables = {
        "data/1/a.csv": all_fingerprints(ames.iloc[:1000], spec),
        "data/2/b.csv": all_fingerprints(ames.iloc[995:2000], spec),  # 5 repeats: 10 of 2005 rows
    }
    assert history_findings(tables, spec) == []
    tables["data/3/c.csv"] = all_fingerprints(ames.iloc[:30], spec)
    assert [f.table for f in history_findings(tables, spec)] == ["data/2/b.csv", "data/3/c.csv"]


def test_record_fingerprints_compare_values_not_storage(ames: pd.DataFrame) -> None:
    spec = ames_spec(unique={})
    frame = ames.head(200)
    as_read_back = frame.astype({"pid": "float64", "neighborhood": "string"})
    assert np.array_equal(
        all_fingerprints(frame, spec)[RECORD], all_fingerprints(as_read_back, spec)[RECORD]
    )
    # Missing values are equal to each other (as pandas' duplicated() treats them) ...
    assert frame["lot_frontage"].isna().any()
    # ... and a row whose key values are all missing has no fingerprint.
    keys = pd.DataFrame({"pid": [1.0, np.nan], "x": [2.0, np.nan]})
    assert len(fingerprints(keys, ["pid", "x"])) == 1
    # A value that differs changes the fingerprint.
    changed = frame.assign(price=frame["price"] + 1)
    assert not np.intersect1d(
        all_fingerprints(frame, spec)[RECORD], all_fingerprints(changed, spec)[RECORD]
    ).size
