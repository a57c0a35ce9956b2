"""A corpus of bad batches, each built from good rows, with the expectation that must refuse it.

``BAD_BATCHES`` maps a name to (builder, substring): the builder takes a good frame in the
California housing schema (``tooling.market.generate_batch``) and returns a damaged copy; the
substring must appear in ``ValidationResult.failures``. The pre-merge gate and the training-flow
gate tests reuse the same corpus.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

Builder = Callable[[pd.DataFrame], pd.DataFrame]

BULK = 0.1
"""Share of rows damaged where a single bad row would be tolerated by a ``mostly``."""


def _some(frame: pd.DataFrame, share: float = BULK) -> pd.Index:
    """Every ``1/share``-th row label: spread over the batch, the same each time."""
    return frame.index[:: round(1 / share)]


def missing_column(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="households")


def extra_unknown_column(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(sale_id=np.arange(len(frame)))


def wrong_type(frame: pd.DataFrame) -> pd.DataFrame:
    # An export that wrote incomes as text with a unit: pandas keeps the column as object.
    damaged = frame.astype({"median_income": object})
    damaged.loc[_some(damaged, 0.01), "median_income"] = "3.5k"
    return damaged


def nulls_over_budget(frame: pd.DataFrame) -> pd.DataFrame:
    damaged = frame.copy()
    damaged.loc[_some(damaged), "total_bedrooms"] = np.nan
    return damaged


def null_in_required_column(frame: pd.DataFrame) -> pd.DataFrame:
    damaged = frame.copy()
    damaged.loc[damaged.index[:1], "latitude"] = np.nan
    return damaged


def out_of_range_values(frame: pd.DataFrame) -> pd.DataFrame:
    damaged = frame.copy()
    damaged.loc[_some(damaged), "housing_median_age"] += 150
    return damaged


def negative_prices(frame: pd.DataFrame) -> pd.DataFrame:
    damaged = frame.copy()
    damaged.loc[_some(damaged, 0.01), "median_house_value"] *= -1
    return damaged


def impossible_room_counts(frame: pd.DataFrame) -> pd.DataFrame:
    damaged = frame.copy()
    rows = _some(damaged, 0.01)
    damaged.loc[rows, "total_bedrooms"] = damaged.loc[rows, "total_rooms"] + 10
    return damaged


def more_households_than_people(frame: pd.DataFrame) -> pd.DataFrame:
    damaged = frame.copy()
    rows = _some(damaged)
    damaged.loc[rows, "households"] = damaged.loc[rows, "population"] + 1
    return damaged


def duplicated_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.head(20)], ignore_index=True)


def empty_batch(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[:0]


def category_never_seen(frame: pd.DataFrame) -> pd.DataFrame:
    damaged = frame.copy()
    damaged.loc[_some(damaged), "ocean_proximity"] = "NEAR LAKE"
    return damaged


def coordinates_elsewhere(frame: pd.DataFrame) -> pd.DataFrame:
    # Block groups around Phoenix, Arizona: east of California's bounding box.
    damaged = frame.copy()
    damaged.loc[_some(damaged), ["longitude", "latitude"]] = (-112.07, 33.45)
    return damaged


def renamed_column(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={"median_income": "income"})


BAD_BATCHES: dict[str, tuple[Builder, str]] = {
    "missing column": (missing_column, "missing column households (expect_column_to_exist)"),
    "extra unknown column": (
        extra_unknown_column,
        "table: expect_table_columns_to_match_set (table columns to match set): unexpected sale_id",
    ),
    "wrong type": (wrong_type, "median_income: expect_column_values_to_be_in_type_list"),
    "nulls over budget": (nulls_over_budget, "total_bedrooms: expect_column_values_to_not_be_null"),
    "null in a required column": (
        null_in_required_column,
        "latitude: expect_column_values_to_not_be_null",
    ),
    "out-of-range values": (
        out_of_range_values,
        "housing_median_age: expect_column_values_to_be_between",
    ),
    "negative prices": (negative_prices, "median_house_value: expect_column_values_to_be_between"),
    "impossible room counts": (
        impossible_room_counts,
        "total_bedrooms, total_rooms: expect_column_pair_values_a_to_be_greater_than_b",
    ),
    "more households than people": (
        more_households_than_people,
        "households, population: expect_column_pair_values_a_to_be_greater_than_b",
    ),
    "duplicated rows": (duplicated_rows, "expect_compound_columns_to_be_unique"),
    "empty batch": (empty_batch, "table: expect_table_row_count_to_be_between"),
    "category never seen": (
        category_never_seen,
        "ocean_proximity: expect_column_values_to_be_in_set",
    ),
    "coordinates elsewhere": (
        coordinates_elsewhere,
        "longitude: expect_column_values_to_be_between",
    ),
    "renamed column": (renamed_column, "missing column median_income (expect_column_to_exist)"),
}
