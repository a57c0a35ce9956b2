"""Data checks with Great Expectations, built from the dataset description.

The suite is derived from the description (columns, types, bounds, categories, missing-value
budgets, row-count floor, domain rules), so a new table needs a YAML file, not a new suite. One
:class:`Validator` serves the three gates: the lakeFS pre-merge hook, the training flow and
``lakeloop validate``. Nothing here names a column of a particular table.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import pandas as pd

from lakeloop.dataset import Between, DatasetSpec, Feature, LessOrEqual, Unique, described
from lakeloop.validation.results import Finding, ValidationResult, finding_from, summarise

if TYPE_CHECKING:  # importing great_expectations costs seconds: only who validates pays
    from great_expectations.expectations import Expectation
    from great_expectations.expectations.metadata_types import FailureSeverity

# Type names Great Expectations resolves for pandas: numpy dtypes, pandas extension dtypes and,
# for object columns (where it checks value by value), the Python types.
NUMERIC_TYPES = [
    "int",
    "float",
    *(f"int{bits}" for bits in (8, 16, 32, 64)),
    *(f"uint{bits}" for bits in (8, 16, 32, 64)),
    *(f"float{bits}" for bits in (16, 32, 64)),
    *(f"Int{bits}Dtype" for bits in (8, 16, 32, 64)),
    "Float32Dtype",
    "Float64Dtype",
]
TEXT_TYPES = ["str", "StringDtype", "CategoricalDtype"]

__all__ = [
    "Finding",
    "ValidationResult",
    "Validator",
    "expectations_for",
    "validate_frame",
]


def expectations_for(spec: DatasetSpec) -> list[Expectation]:
    """The Great Expectations suite the description implies (each carries ``meta.allowed``)."""
    import great_expectations as gx  # noqa: PLC0415 - 2-3 s import, paid only by who validates

    expect = gx.expectations
    suite: list[Expectation] = [
        expect.ExpectTableRowCountToBeBetween(
            min_value=spec.min_rows, meta={"allowed": f"at least {spec.min_rows} rows"}
        ),
        expect.ExpectTableColumnsToMatchSet(
            column_set=list(spec.stored_columns),
            exact_match=True,
            meta={"allowed": "exactly the described columns: " + ", ".join(spec.stored_columns)},
        ),
    ]
    for column in spec.stored_columns:
        suite.append(expect.ExpectColumnToExist(column=column, meta={"allowed": "present"}))
    suite += _target_expectations(spec)
    for feature in spec.features:
        suite += _feature_expectations(feature)
    for check in spec.checks:
        suite.append(_domain_expectation(check, columns=spec.record_columns))
    return suite


def _target_expectations(spec: DatasetSpec) -> list[Expectation]:
    import great_expectations as gx  # noqa: PLC0415 - already imported by the caller

    expect = gx.expectations
    target = spec.target
    allowed = (
        f"at most {target.max_missing:.1%} missing (target.max_missing)"
        if target.max_missing
        else "no missing values"
    )
    suite = [
        _type_expectation(target.name, numeric=True),
        expect.ExpectColumnValuesToNotBeNull(
            column=target.name, mostly=1 - target.max_missing, meta={"allowed": allowed}
        ),
    ]
    if target.min is not None or target.max is not None:
        suite.append(
            expect.ExpectColumnValuesToBeBetween(
                column=target.name,
                min_value=target.min,
                max_value=target.max,
                meta={"allowed": _range(target.min, target.max)},
            )
        )
    return suite


def _feature_expectations(feature: Feature) -> list[Expectation]:
    import great_expectations as gx  # noqa: PLC0415 - already imported by the caller

    expect = gx.expectations
    suite = [_type_expectation(feature.name, numeric=feature.type == "numeric")]
    budget = feature.missing_budget
    if budget < 1:
        allowed = "no missing values" if budget == 0 else f"at most {budget:.1%} missing"
        suite.append(
            expect.ExpectColumnValuesToNotBeNull(
                column=feature.name, mostly=1 - budget, meta={"allowed": allowed}
            )
        )
    tolerance = _mostly(feature.mostly)
    if feature.type == "categorical":
        suite.append(
            expect.ExpectColumnValuesToBeInSet(
                column=feature.name,
                value_set=list(feature.categories),
                mostly=feature.mostly,
                meta={"allowed": "one of " + ", ".join(feature.categories) + tolerance},
            )
        )
    elif feature.min is not None or feature.max is not None:
        suite.append(
            expect.ExpectColumnValuesToBeBetween(
                column=feature.name,
                min_value=feature.min,
                max_value=feature.max,
                mostly=feature.mostly,
                meta={"allowed": _range(feature.min, feature.max) + tolerance},
            )
        )
    return suite


def _type_expectation(column: str, *, numeric: bool) -> Expectation:
    import great_expectations as gx  # noqa: PLC0415 - already imported by the caller

    # In-type-list checks the dtype, and on object columns every value, so a stray string in a
    # numeric column is caught even though pandas stored the column as "object".
    return gx.expectations.ExpectColumnValuesToBeInTypeList(
        column=column,
        type_list=NUMERIC_TYPES if numeric else TEXT_TYPES,
        meta={"allowed": "numbers" if numeric else "text"},
    )


def _domain_expectation(
    check: LessOrEqual | Unique | Between, *, columns: list[str]
) -> Expectation:
    import great_expectations as gx  # noqa: PLC0415 - already imported by the caller
    from great_expectations.expectations.metadata_types import FailureSeverity  # noqa: PLC0415

    expect = gx.expectations
    severity = FailureSeverity.CRITICAL if check.severity == "failure" else FailureSeverity.WARNING
    tolerance = _mostly(check.mostly)
    common: _DomainOptions = {"mostly": check.mostly, "severity": severity}
    if check.description:
        common["notes"] = check.description
    if isinstance(check, LessOrEqual):
        # GX phrases it the other way round: A >= B.
        return expect.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=check.right,
            column_B=check.left,
            or_equal=True,
            ignore_row_if="either_value_is_missing",
            meta={"allowed": f"{check.left} <= {check.right}{tolerance}"},
            **common,
        )
    if isinstance(check, Unique):
        keys = list(check.columns or columns)
        return expect.ExpectCompoundColumnsToBeUnique(
            column_list=keys,
            meta={"allowed": "no duplicate records" + tolerance},
            **common,
        )
    return expect.ExpectColumnValuesToBeBetween(
        column=check.column,
        min_value=check.min,
        max_value=check.max,
        meta={"allowed": _range(check.min, check.max) + tolerance},
        **common,
    )


class _DomainOptions(TypedDict, total=False):
    """What every domain rule's expectation takes besides its columns."""

    mostly: float
    severity: FailureSeverity
    notes: str


def _range(low: float | None, high: float | None) -> str:
    if low is None:
        return f"at most {high:g}"
    if high is None:
        return f"at least {low:g}"
    return f"{low:g} to {high:g}"


def _mostly(share: float) -> str:
    return "" if share >= 1 else f" in at least {share:.1%} of rows"


class Validator:
    """A warm Great Expectations context with the description's suite, ready to check frames.

    Setting one up costs 2-3 s (mostly the import); a check then costs milliseconds to a few
    tenths of a second, so long-lived processes (the gateway's pre-merge hook) build one and
    keep it. Safe to share between threads.
    """

    def __init__(self, spec: DatasetSpec) -> None:
        import great_expectations as gx  # noqa: PLC0415 - heavy, paid only by who validates
        from great_expectations.data_context.types.base import (  # noqa: PLC0415
            ProgressBarsConfig,
        )

        self.spec = spec
        context = gx.get_context(mode="ephemeral")
        # Progress bars would spam the gateway's and the flow's logs on every batch.
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = context.data_sources.add_pandas("lakeloop").add_dataframe_asset(spec.name)
        self._batches = asset.add_batch_definition_whole_dataframe("batch")
        self.suite = context.suites.add(
            gx.ExpectationSuite(name=suite_name(spec), expectations=expectations_for(spec))
        )
        # One context is not safe for concurrent validations; hooks may arrive together.
        self._lock = threading.Lock()

    def validate(self, frame: pd.DataFrame) -> ValidationResult:
        """Check ``frame`` against the suite; findings say what broke, failures first."""
        frame = described(frame, self.spec)  # category codes stored as numbers are compared as text
        with self._lock:
            batch = self._batches.get_batch(batch_parameters={"dataframe": frame})
            result = batch.validate(self.suite, result_format="SUMMARY")
        raw = result.to_json_dict()
        findings = summarise(
            [
                *(finding_from(check, rows=len(frame)) for check in result.results),
                *event_time_findings(frame, self.spec, now=pd.Timestamp.now(tz="UTC")),
            ]
        )
        return ValidationResult(
            success=not any(finding.severity == "failure" for finding in findings),
            rows=len(frame),
            findings=findings,
            raw=raw,
        )


EVENT_TIME = "expect_event_time_to_parse_and_not_be_in_the_future"


def event_time_findings(
    frame: pd.DataFrame, spec: DatasetSpec, *, now: pd.Timestamp
) -> list[Finding]:
    """Rows whose event time is missing, does not parse, or is after ``now``, named by row
    number. Checked here, not by a Great Expectations expectation: the time is parsed exactly as
    the training split parses it (its strftime expectation does not cover a year and month pair
    or a time after now)."""
    event = spec.event_time
    if event is None or any(column not in frame.columns for column in event.columns):
        return []  # a missing column is named by its own expectation
    times = event.parse(frame)
    written = f"format {event.format}" if event.format else "ISO 8601"
    if event.column is None:
        written = "a year" + (" and a month (1-12)" if event.month else "")
    findings = []
    for broken, what in (
        (times.isna().to_numpy(), f"have no time in {written}"),
        ((times > now).to_numpy(), f"are after now ({now:%Y-%m-%d %H:%M} UTC)"),
    ):
        count = int(broken.sum())
        if not count:
            continue
        rows = np.flatnonzero(broken)[:5].tolist()
        examples = frame.loc[frame.index[rows], event.columns].astype(str).agg(" ".join, axis=1)
        findings.append(
            Finding(
                expectation=EVENT_TIME,
                column=", ".join(event.columns),
                severity="failure",
                observed=(
                    f"{count} rows {what}: rows {', '.join(map(str, rows))}"
                    f"{' ...' if count > len(rows) else ''} ({', '.join(examples)})"
                ),
                allowed=f"a time in {written}, not in the future",
                unexpected_count=count,
            )
        )
    return findings


def suite_name(spec: DatasetSpec) -> str:
    """The suite's name: the dataset and its description's version."""
    return f"{spec.name}-v{spec.version}"


@lru_cache(maxsize=4)
def warm_validator(spec: DatasetSpec) -> Validator:
    """This process's :class:`Validator` for ``spec`` (built on first use, then kept)."""
    return Validator(spec)


def validate_frame(frame: pd.DataFrame, spec: DatasetSpec) -> ValidationResult:
    """Check ``frame`` with a warm :class:`Validator` for ``spec`` (built on first use)."""
    return warm_validator(spec).validate(frame)
