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
