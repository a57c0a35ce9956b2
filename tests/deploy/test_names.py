"""The check every deployment file's settings go through must itself tell a typo from a setting."""

from __future__ import annotations

import pytest

from tests.deploy.names import is_setting, unknown_settings


@pytest.mark.parametrize(
    "name",
    [
        "LAKELOOP_STATE_DIR",
        "LAKELOOP_LAKEFS__ENDPOINT",
        "LAKELOOP_MLFLOW__TRACKING_URI",
        "LAKELOOP_PREFECT__DATABASE_URL",
        "LAKELOOP_OBSERVABILITY__PUSHGATEWAY_URL",
        "LAKELOOP_MONITORING__POLICY__MIN_ROWS",
        "lakeloop_api__admin_token",  # pydantic-settings reads names case-insensitively
    ],
)
def test_real_settings_are_recognised(name: str) -> None:
    assert is_setting(name)


@pytest.mark.parametrize(
    "name",
    [
        "LAKELOOP_MLFLOW__TRACKING_URL",  # a typo: the default would be used, silently
        "LAKELOOP_LAKEFS_ENDPOINT",  # one underscore where the nesting needs two
        "LAKELOOP_API__ADMIN_TOKEN__X",  # past a leaf
        "LAKELOOP_MLFLOW",  # a whole group, not a value
        "LAKELOOP_NOPE",
    ],
)
def test_misspelled_names_are_caught(name: str) -> None:
    assert not is_setting(name)


def test_only_lakeloop_names_are_judged() -> None:
    names = ["PREFECT_API_URL", "LAKELOOP_API__PORT", "LAKELOOP_API__PROT"]
    assert unknown_settings(names) == ["LAKELOOP_API__PROT"]
