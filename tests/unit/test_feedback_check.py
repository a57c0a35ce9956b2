"""Reported values checked before a retrain folds them (monitoring.labels), and where the verdict
is shown: the Prefect artifact, ``lakeloop report``'s store, the log."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from lakeloop.dataset import DatasetSpec
from lakeloop.settings import Settings
from monitoring.labels import FoldRecord, Provenance, check_labels, provenance
from monitoring.store import append_fold, read_folds
from monitoring.window import REPORTED_AT, REPORTED_BY
from pipelines.retrain import DriftWindow, Fold, report_fold
from pipelines.runtime import Runtime

WINDOW = DriftWindow(champion_version="4", window_id="w-1")


def reports(spec: DatasetSpec, *, factor: float, rows: int = 800, seed: int = 5) -> pd.DataFrame:
    """A window whose reported values are the predictions times ``factor``, with noise."""
    rng = np.random.default_rng(seed)
    predicted = rng.uniform(80_000, 450_000, rows)
    actual = predicted * factor * np.exp(rng.normal(0, 0.2, rows))
    return pd.DataFrame(
        {
            "prediction": predicted,
            spec.target.name: actual,
            REPORTED_AT: pd.date_range("2026-05-01", periods=rows, freq="min", tz=UTC),
            REPORTED_BY: ["partner"] * (rows - rows // 8) + [None] * (rows // 8),
        }
    )


@pytest.mark.parametrize(
    ("factor", "passed"), [(1.0, True), (1.25, True), (0.8, True), (1.5, False), (1 / 1.5, False)]
)
def test_a_window_is_held_back_only_beyond_the_tolerance_either_way(
    spec: DatasetSpec, factor: float, passed: bool
) -> None:
    check = check_labels(
        reports(spec, factor=factor), spec, holdout_bias=0.0, tolerance=1.4, min_rows=500
    )

    assert check.passed is passed
    assert check.factor == pytest.approx(factor, rel=0.03)
    assert check.rows == 800
    assert ("beyond the tolerance of x1.40" in check.reason) is not passed
    assert ("above" if factor > 1 else "below") in check.reason or factor == 1.0


def test_a_small_window_is_not_judged(spec: DatasetSpec) -> None:
    check = check_labels(
        reports(spec, factor=3.0, rows=40), spec, holdout_bias=None, tolerance=1.4, min_rows=500
    )

    assert check.passed
    assert check.factor is None
    assert "too few" in check.reason


def test_a_target_that_is_not_always_positive_is_left_to_the_gate(spec: DatasetSpec) -> None:
    window = reports(spec, factor=1.5)
    window.loc[3, spec.target.name] = -10.0

    check = check_labels(window, spec, holdout_bias=None, tolerance=1.4, min_rows=500)

    assert check.passed
    assert "not always positive" in check.reason


def test_provenance_counts_clients_and_names_the_unnamed(spec: DatasetSpec) -> None:
    who = provenance(reports(spec, factor=1.0))

    assert who.rows == 800
    assert who.clients == {"partner": 700, "unnamed": 100}
    assert who.first_reported == datetime(2026, 5, 1, tzinfo=UTC)
    assert who.metadata()["lakeloop.feedback.clients"] == "partner=700,unnamed=100"


class Recording(Runtime):
    def __init__(self) -> None:
        self.artifacts: list[tuple[str, str]] = []

    def artifact(self, key: str, markdown: str, description: str) -> None:
        self.artifacts.append((key, markdown))


def test_a_held_back_window_is_reported_where_the_user_looks(
    settings: Settings, spec: DatasetSpec, caplog: pytest.LogCaptureFixture
) -> None:
    window = reports(spec, factor=1.5)
    check = check_labels(window, spec, holdout_bias=0.0, tolerance=1.4, min_rows=500)
    fold = Fold(
        note=f"the prices of window w-1 were held back: {check.reason}",
        check=check,
        provenance=provenance(window),
        held_at="/state/monitoring/feedback/feedback-w-1.parquet",
    )
    runtime = Recording()

    report_fold(settings, WINDOW, fold, runtime=runtime)

    [(key, markdown)] = runtime.artifacts
    assert key == "feedback-check"
    assert "**not folded**" in markdown
    assert "lakeloop ingest /state/monitoring/feedback/feedback-w-1.parquet" in markdown
    assert "reported by partner (700), unnamed (100)" in markdown
    [record] = read_folds(settings.monitoring_store, last=5)
    assert not record.folded
    assert record.window_id == "w-1"
    assert record.check == check
    assert "NOT FOLDED" in record.describe()
    assert "beyond the tolerance" in record.describe()
    assert "held back" in caplog.text


def test_fold_records_are_read_newest_last(settings: Settings) -> None:
    store = settings.monitoring_store
    for number in range(4):
        record = FoldRecord(
            time=datetime(2026, 5, 1, number, tzinfo=UTC),
            champion_version="1",
            window_id=f"w-{number}",
            folded=True,
            reason="folded",
            provenance=Provenance(
                rows=1, clients={"local": 1}, first_reported=None, last_reported=None
            ),
            commit_id=f"c{number}" * 8,
        )
        append_fold(store, record)

    assert [r.window_id for r in read_folds(store, last=2)] == ["w-2", "w-3"]


def test_prices_the_data_checks_refused_say_so_not_that_the_check_passed(
    spec: DatasetSpec,
) -> None:
    check = check_labels(
        reports(spec, factor=1.0), spec, holdout_bias=0.0, tolerance=1.4, min_rows=500
    )
    record = FoldRecord(
        time=datetime(2026, 5, 1, tzinfo=UTC),
        champion_version="2",
        window_id="w-9",
        folded=False,
        reason="the reported prices were refused by the data checks: price_range failed",
        check=check,
    )

    assert "NOT FOLDED: the reported prices were refused by the data checks" in record.describe()
