"""The validation layer: suite from the description, findings, severities, reports."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pandas as pd
import pytest

from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.validation.checks import ValidationResult, Validator, validate_frame
from lakeloop.validation.report import write_report
from tooling import market

FLATS = """
name: flats
version: 1
min_rows: 2
target: {name: rent, min: 100, max: 5000}
features:
  - {name: area, type: numeric, min: 5, max: 500}
  - {name: rooms, type: numeric, min: 1}
  - {name: city, type: categorical, categories: [Ghent, Leuven]}
checks:
  - {rule: less_or_equal, left: rooms, right: area}
  - {rule: between, column: rent, min: 300, max: 2000, severity: warning}
  - {rule: unique, columns: [area, city]}
"""


@pytest.fixture(scope="module")
def flats(tmp_path_factory: pytest.TempPathFactory) -> DatasetSpec:
    path = tmp_path_factory.mktemp("spec") / "flats.yaml"
    path.write_text(FLATS)
    return load_spec(path)


def frame(**overrides: list[object]) -> pd.DataFrame:
    rows = {"area": [40.0, 60.0, 80.0], "rooms": [2.0, 3.0, 4.0], "city": ["Ghent"] * 3}
    return pd.DataFrame({**rows, "rent": [800.0, 900.0, 1000.0], **overrides})


def test_a_clean_frame_passes(flats: DatasetSpec) -> None:
    result = validate_frame(frame(), flats)
    assert (result.success, result.outcome, result.findings) == (True, "passed", [])
    assert result.rows == 3


def test_a_broken_warning_rule_is_reported_but_does_not_block(flats: DatasetSpec) -> None:
    result = validate_frame(frame(rent=[800.0, 900.0, 4000.0]), flats)
    assert result.success
    assert result.failures == []
    assert len(result.warnings) == 1
    assert "rent: expect_column_values_to_be_between" in result.warnings[0]
    assert result.outcome == "passed with 1 warnings"
    assert [f.severity for f in result.findings] == ["warning"]


def test_failures_come_before_warnings_and_describe_the_rule(flats: DatasetSpec) -> None:
    result = validate_frame(frame(rooms=[2.0, 300.0, 4.0], rent=[800.0, 900.0, 4000.0]), flats)
    assert not result.success
    assert [f.severity for f in result.findings] == ["failure", "warning"]
    pair = result.findings[0]
    assert pair.expectation == "expect_column_pair_values_a_to_be_greater_than_b"
    assert pair.column == "rooms, area"
    assert pair.allowed == "rooms <= area"
    assert pair.unexpected_count == 1
    assert "300 > 60" in pair.observed
    assert result.outcome.startswith("failed: rooms, area: expect_column_pair")


def test_a_missing_column_is_named_once(flats: DatasetSpec) -> None:
    result = validate_frame(frame().drop(columns="rooms"), flats)
    assert result.failures == ["missing column rooms (expect_column_to_exist)"]


def test_a_string_in_a_numeric_column_is_a_type_failure_only(flats: DatasetSpec) -> None:
    result = validate_frame(frame(area=[40.0, "sixty", 80.0]), flats)
    assert len(result.failures) == 1
    assert result.failures[0].startswith("area: expect_column_values_to_be_in_type_list")
    assert "'sixty'" in result.failures[0]


def test_row_count_floor_and_unique_key_come_from_the_description(flats: DatasetSpec) -> None:
    too_few = validate_frame(frame().head(1), flats)
    assert any("expect_table_row_count_to_be_between" in line for line in too_few.failures)
    assert "at least 2 rows" in too_few.failures[0]
    twice = validate_frame(frame(area=[40.0, 40.0, 80.0]), flats)
    assert twice.findings[0].expectation == "expect_compound_columns_to_be_unique"
    assert twice.findings[0].column == "area, city"


def test_markdown_is_a_table_of_findings(flats: DatasetSpec) -> None:
    text = validate_frame(frame(rooms=[2.0, 300.0, 4.0]), flats).to_markdown()
    assert "| column | expectation | observed | allowed | severity |" in text
    assert "| rooms, area | expect_column_pair_values_a_to_be_greater_than_b |" in text
    assert text.startswith("**Data checks failed** on 3 rows: 1 failures, 0 warnings.")


def test_json_carries_summary_findings_and_the_raw_gx_result(flats: DatasetSpec) -> None:
    result = validate_frame(frame(rent=[800.0, 900.0, 4000.0]), flats)
    document = json.loads(json.dumps(result.to_json()))
    assert document["success"] is True
    assert document["findings"][0]["severity"] == "warning"
    assert len(document["raw"]["results"]) == len(Validator(flats).suite.expectations)


def test_report_stores_json_markdown_and_gx_data_docs(flats: DatasetSpec, tmp_path: Path) -> None:
    result = validate_frame(frame(rooms=[2.0, 300.0, 4.0]), flats)
    files = write_report(result, tmp_path / "report", spec=flats)
    assert json.loads(files["json"].read_text())["success"] is False
    assert "expect_column_pair" in files["markdown"].read_text()
    assert "<html" in files["data_docs"].read_text().lower()
    page = files["html"].read_text()
    assert "flats-v1" in page
    assert "rooms" in page
    assert (tmp_path / "report/data_docs/static").is_dir()


def test_one_validator_serves_concurrent_callers(flats: DatasetSpec) -> None:
    validator = Validator(flats)
    good, bad = frame(), frame(rooms=[2.0, 300.0, 4.0])
    outcomes: list[ValidationResult] = []

    def check(data: pd.DataFrame) -> None:
        outcomes.append(validator.validate(data))

    threads = [threading.Thread(target=check, args=(d,)) for d in [good, bad] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.success for r in outcomes) == [False] * 4 + [True] * 4


def test_validation_code_names_no_column_of_the_example(spec: DatasetSpec) -> None:
    source = " ".join(
        path.read_text()
        for path in (Path(__file__).resolve().parents[2] / "validation").glob("*.py")
    )
    named = [c for c in spec.columns if re.search(rf"\b{c}\b", source)]
    assert named == []


def test_the_example_description_declares_the_analysts_rules(spec: DatasetSpec) -> None:
    rules = {(check.rule, *check.columns_used()) for check in spec.checks}
    assert ("less_or_equal", "total_bedrooms", "total_rooms") in rules
    assert ("less_or_equal", "households", "population") in rules
    assert ("unique",) in rules
    assert spec.feature("total_bedrooms").missing_budget == 0.03
    assert market.generate_batch(rows=10, seed=1).columns.tolist() == spec.columns
