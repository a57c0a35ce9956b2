"""Data checks with Great Expectations, built from the dataset description.

The suite is derived from the description (columns, types, bounds, categories, nullability), so a
new table needs a YAML file, not a new suite.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lakeloop.dataset import DatasetSpec

# Share of rows allowed outside a feature's bounds before the batch is refused; the census data
# itself has a few odd block groups, and one odd row must not stop a release.
BOUNDS_MOSTLY = 0.99


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of checking one table."""

    success: bool
    rows: int
    failures: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        return "passed" if self.success else "failed: " + "; ".join(self.failures)


def expectations_for(spec: DatasetSpec) -> list[Any]:
    """The Great Expectations suite content the description implies."""
    import great_expectations as gx  # noqa: PLC0415 - 2-3 s import, paid only by who validates

    expect = gx.expectations
    suite: list[Any] = [expect.ExpectTableRowCountToBeBetween(min_value=1)]
    for column in spec.columns:
        suite.append(expect.ExpectColumnToExist(column=column))
    suite.append(expect.ExpectColumnValuesToNotBeNull(column=spec.target.name))
    suite.append(
        expect.ExpectColumnValuesToBeBetween(
            column=spec.target.name, min_value=spec.target.min, max_value=spec.target.max
        )
    )
    for feature in spec.features:
        if not feature.nullable:
            suite.append(expect.ExpectColumnValuesToNotBeNull(column=feature.name))
        if feature.type == "categorical":
            suite.append(
                expect.ExpectColumnValuesToBeInSet(
                    column=feature.name, value_set=list(feature.categories), mostly=BOUNDS_MOSTLY
                )
            )
        elif feature.min is not None or feature.max is not None:
            suite.append(
                expect.ExpectColumnValuesToBeBetween(
                    column=feature.name,
                    min_value=feature.min,
                    max_value=feature.max,
                    mostly=BOUNDS_MOSTLY,
                )
            )
    return suite


class Validator:
    """A warm Great Expectations context with the description's suite, ready to check frames.

    Setting one up costs 2-3 s (mostly the import); a check then costs milliseconds, so
    long-lived processes (the gateway's pre-merge hook) build one and keep it.
    """

    def __init__(self, spec: DatasetSpec) -> None:
        import great_expectations as gx  # noqa: PLC0415 - heavy, paid only by who validates

        self.spec = spec
        context = gx.get_context(mode="ephemeral")
        asset = context.data_sources.add_pandas("lakeloop").add_dataframe_asset(spec.name)
        self._batches = asset.add_batch_definition_whole_dataframe("batch")
        self._suite = context.suites.add(
            gx.ExpectationSuite(
                name=f"{spec.name}-v{spec.version}", expectations=expectations_for(spec)
            )
        )
        # One context is not safe for concurrent validations; hooks may arrive together.
        self._lock = threading.Lock()

    def validate(self, frame: pd.DataFrame) -> ValidationResult:
        """Check ``frame`` against the suite; failures are described one per line."""
        with self._lock:
            batch = self._batches.get_batch(batch_parameters={"dataframe": frame})
            result = batch.validate(self._suite)
        failed = [
            (check.expectation_config, check.result)
            for check in result.results
            if not check.success and check.expectation_config is not None
        ]
        # A missing column fails every expectation on it; name the cause once.
        missing = {
            config.kwargs["column"]
            for config, _ in failed
            if config.type == "expect_column_to_exist"
        }
        failures = [f"missing column {name}" for name in sorted(missing)] + [
            describe_failure(config, outcome)
            for config, outcome in failed
            if config.kwargs.get("column") not in missing
        ]
        return ValidationResult(success=bool(result.success), rows=len(frame), failures=failures)


def validate_frame(frame: pd.DataFrame, spec: DatasetSpec) -> ValidationResult:
    """One-off check of ``frame`` (builds a fresh :class:`Validator`)."""
    return Validator(spec).validate(frame)


def describe_failure(config: Any, result: dict[str, Any]) -> str:
    """One readable line for a failed expectation."""
    column = config.kwargs.get("column")
    what = config.type.removeprefix("expect_").replace("_", " ")
    where = f"{column}: " if column else ""
    unexpected = result.get("unexpected_count")
    detail = f" ({unexpected} rows)" if unexpected else ""
    if result.get("observed_value") is not None and not unexpected:
        detail = f" (observed {result['observed_value']})"
    return f"{where}{what}{detail}"
