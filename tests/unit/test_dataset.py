from __future__ import annotations

from pathlib import Path

import pytest

from lakeloop.dataset import DatasetSpec, load_spec


def test_shipped_example_describes_california_housing(spec: DatasetSpec) -> None:
    assert spec.target.name == "median_house_value"
    assert spec.categorical_features == ["ocean_proximity"]
    assert "median_income" in spec.numeric_features
    assert spec.columns[-1] == spec.target.name
    assert spec.feature("total_bedrooms").nullable


def test_own_table_needs_only_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "flats.yaml"
    path.write_text(
        "name: flats\nversion: 2\ntarget: {name: rent}\nfeatures:\n"
        "  - {name: area, type: numeric, min: 5}\n"
        "  - {name: city, type: categorical, categories: [Ghent, Leuven]}\n"
    )
    flats = load_spec(path)
    assert flats.columns == ["area", "city", "rent"]
    assert flats.feature("city").categories == ("Ghent", "Leuven")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("features:\n  - {name: city, type: categorical}\n", "needs a list of categories"),
        ("features:\n  - {name: rent, type: numeric}\n", "appear twice: rent"),
        ("features:\n  - {name: area, type: numeric, min: 9, max: 1}\n", "min > max"),
        ("features:\n  - {name: area, type: text}\n", "type"),
    ],
)
def test_invalid_description_names_the_problem(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nversion: 1\ntarget: {name: rent}\n" + body)
    with pytest.raises(ValueError, match=problem):
        load_spec(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nowhere\.yaml"):
        load_spec(tmp_path / "nowhere.yaml")


def test_checks_budgets_and_row_floor_have_safe_defaults(tmp_path: Path) -> None:
    path = tmp_path / "flats.yaml"
    path.write_text(
        "name: flats\nversion: 1\ntarget: {name: rent}\nfeatures:\n"
        "  - {name: area, type: numeric}\n"
        "  - {name: floor, type: numeric, nullable: true}\n"
        "  - {name: lift, type: numeric, nullable: true, max_missing: 0.1}\n"
        "checks:\n  - {rule: unique}\n"
    )
    flats = load_spec(path)
    assert flats.min_rows == 1
    assert [f.missing_budget for f in flats.features] == [0.0, 1.0, 0.1]
    assert flats.checks[0].severity == "failure"
    assert flats.checks[0].mostly == 1.0


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("  - {rule: less_or_equal, left: area, right: nowhere}\n", "unknown columns: nowhere"),
        ("  - {rule: less_or_equal, left: area, right: city}\n", "needs numeric columns"),
        ("  - {rule: unique, columns: [area, ghost]}\n", "unknown columns: ghost"),
        ("  - {rule: between, column: rent}\n", "needs min or max"),
        ("  - {rule: between, column: rent, min: 9, max: 1}\n", "min > max"),
        ("  - {rule: unique, severity: fatal}\n", "severity"),
        ("  - {rule: sometimes}\n", "rule"),
        ("  - {rule: unique, mostly: 1.5}\n", "mostly"),
        ("  - {rule: unique, colums: [area]}\n", "colums"),
    ],
)
def test_invalid_check_names_the_problem(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nversion: 1\ntarget: {name: rent}\nfeatures:\n"
        "  - {name: area, type: numeric}\n"
        "  - {name: city, type: categorical, categories: [Ghent]}\n"
        "checks:\n" + body
    )
    with pytest.raises(ValueError, match=problem):
        load_spec(path)


@pytest.mark.parametrize(
    ("feature", "problem"),
    [
        ("{name: area, type: numeric, max_missing: 0.1}", "is not nullable"),
        ("{name: area, type: numeric, nullable: true, max_missing: 2}", "max_missing"),
    ],
)
def test_invalid_missing_budget_names_the_problem(
    tmp_path: Path, feature: str, problem: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nversion: 1\ntarget: {{name: rent}}\nfeatures:\n  - {feature}\n")
    with pytest.raises(ValueError, match=problem):
        load_spec(path)
