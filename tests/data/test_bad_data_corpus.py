"""Every batch of the bad-data corpus is refused by the right expectation; good data passes."""

from __future__ import annotations

import pandas as pd
import pytest

from lakeloop.dataset import DatasetSpec
from lakeloop.validation.checks import Validator, validate_frame
from tests.utils.bad_batches import BAD_BATCHES, Builder
from tests.utils.real_data import read_california
from tooling import market


@pytest.fixture(scope="module")
def validator(spec: DatasetSpec) -> Validator:
    return Validator(spec)


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    return market.generate_batch(rows=2_000, seed=42)


def test_baseline_batches_pass(validator: Validator) -> None:
    for rows, seed in [(1, 0), (500, 1), (3_000, 7), (20_000, 3)]:
        result = validator.validate(market.generate_batch(rows=rows, seed=seed))
        assert result.success, result.outcome
        assert result.failures == []


def test_the_real_census_table_passes_every_failure_rule(spec: DatasetSpec) -> None:
    result = validate_frame(read_california(), spec)
    assert result.success, result.outcome


@pytest.mark.parametrize(("name", "case"), BAD_BATCHES.items(), ids=list(BAD_BATCHES))
def test_bad_batch_is_refused_by_the_right_expectation(
    validator: Validator, good: pd.DataFrame, name: str, case: tuple[Builder, str]
) -> None:
    build, expected = case
    result = validator.validate(build(good.copy()))
    assert any(expected in line for line in result.failures), (name, result.failures)


def test_corpus_covers_the_issue_list() -> None:
    assert sorted(BAD_BATCHES) == sorted(
        [
            "missing column",
            "extra unknown column",
            "wrong type",
            "nulls over budget",
            "null in a required column",
            "out-of-range values",
            "negative prices",
            "impossible room counts",
            "more households than people",
            "duplicated rows",
            "empty batch",
            "category never seen",
            "coordinates elsewhere",
            "renamed column",
        ]
    )


def test_the_corrupt_market_scenario_is_refused(validator: Validator) -> None:
    corrupt = market.generate_batch(rows=2_000, seed=5, scenario=market.Scenario.preset("corrupt"))
    assert not validator.validate(corrupt).success
