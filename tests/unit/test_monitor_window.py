"""Which predictions a monitor run looks at, and which reported prices a retrain adds to lakeFS:
read from logs the API's own writer produced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from lakeloop.dataset import DatasetSpec
from lakeloop.stores.objects import ObjectStore
from lakeloop.stores.prediction_log import Entry
from monitoring.history import Window
from monitoring.reference import cached_reference, reference_frame
from monitoring.window import champion_window, labelled_rows, window_feedback
from tests.utils.api_logs import Logs
from tests.utils.descriptions import changed
from tooling import market

START = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def logs(tmp_path: Path, spec: DatasetSpec) -> Logs:
    return Logs(tmp_path, spec)


def _sales(rows: int, seed: int) -> pd.DataFrame:
    return market.generate_batch(rows=rows, seed=seed)


def test_window_holds_only_the_champions_most_recent_predictions(
    logs: Logs, spec: DatasetSpec
) -> None:
    logs.predict(_sales(30, 1), version="1", at=START)
    logs.predict(_sales(40, 2), version="2", at=START + timedelta(minutes=1))
    newest = logs.predict(_sales(20, 3), version="2", at=START + timedelta(minutes=2))
    logs.predict(_sales(10, 4), version="1", at=START + timedelta(minutes=3))  # an old replica

    frame, window = champion_window(logs.state, spec, model_version="2", rows=50)

    assert len(frame) == window.rows == 50
    assert set(frame["model_version"]) == {"2"}
    assert frame["prediction_id"].tolist()[-20:] == newest  # the most recent, oldest first
    assert window.start == START + timedelta(minutes=1)
    assert window.end == START + timedelta(minutes=2)
    assert frame[spec.target.name].isna().all()  # no price reported yet


def test_window_id_is_the_same_for_the_same_predictions(logs: Logs, spec: DatasetSpec) -> None:
    logs.predict(_sales(30, 1), version="2", at=START)
    _, first = champion_window(logs.state, spec, model_version="2", rows=30)
    _, again = champion_window(logs.state, spec, model_version="2", rows=30)
    logs.predict(_sales(5, 2), version="2", at=START + timedelta(minutes=1))
    _, moved = champion_window(logs.state, spec, model_version="2", rows=30)
    assert first.id == again.id
    assert moved.id != first.id
    # The window goes into the history file and the drift event as JSON.
    assert msgspec.json.decode(msgspec.json.encode(first), type=Window) == first


def test_window_since_drops_older_predictions(logs: Logs, spec: DatasetSpec) -> None:
    logs.predict(_sales(30, 1), version="2", at=START)
    logs.predict(_sales(10, 2), version="2", at=START + timedelta(hours=1))
    frame, window = champion_window(
        logs.state, spec, model_version="2", rows=1000, since=START + timedelta(minutes=30)
    )
    assert len(frame) == window.rows == 10


def test_no_predictions_of_the_champion_is_an_empty_window(logs: Logs, spec: DatasetSpec) -> None:
    logs.predict(_sales(30, 1), version="1", at=START)
    frame, window = champion_window(logs.state, spec, model_version="2", rows=100)
    assert frame.empty
    assert window.rows == 0


def test_reported_prices_join_their_predictions_latest_report_wins(
    logs: Logs, spec: DatasetSpec
) -> None:
    sales = _sales(10, 1)
    ids = logs.predict(sales, version="2", at=START)
    logs.report(ids[:3], [100_000.0, 200_000.0, 300_000.0], at=START + timedelta(minutes=5))
    logs.report([ids[0]], [111_000.0], at=START + timedelta(minutes=6))  # a correction
    logs.report(["unknown-id"], [1.0], at=START + timedelta(minutes=6))

    frame, _ = champion_window(logs.state, spec, model_version="2", rows=100)

    prices = frame.set_index("prediction_id")[spec.target.name]
    assert prices[ids[0]] == 111_000.0
    assert prices[ids[1]] == 200_000.0
    assert prices[ids[2]] == 300_000.0
    assert prices[ids[3:]].isna().all()


def test_window_feedback_is_a_training_table_of_the_windows_reported_sales(
    logs: Logs, spec: DatasetSpec
) -> None:
    before = logs.predict(_sales(5, 1), version="2", at=START - timedelta(hours=1))
    sales = _sales(8, 2)
    inside = logs.predict(sales, version="2", at=START)
    after = logs.predict(_sales(5, 3), version="2", at=START + timedelta(hours=1))
    reported = sales[spec.target.name].tolist()
    logs.report([*before, *inside[:6], *after], [1e5] * 5 + reported[:6] + [1e5] * 5, at=START)

    rows = window_feedback(
        logs.state, spec, model_version="2", start=START, end=START + timedelta(minutes=1)
    )

    assert list(rows.columns) == [*spec.feature_names, spec.target.name]
    assert rows[spec.target.name].tolist() == reported[:6]
    expected = sales[spec.feature_names].head(6).reset_index(drop=True)
    pd.testing.assert_frame_equal(rows[spec.feature_names], expected, check_dtype=False)


def test_a_window_logged_under_the_champions_older_description_folds_under_the_new_one(
    logs: Logs, spec: DatasetSpec
) -> None:
    """The champion was trained (and its requests logged) before the description added a
    nullable feature: its reported sales become training rows with that feature missing, as in
    any older table, and rows logged under each description keep their own columns."""
    added = changed(add={"name": "year_built", "type": "numeric", "nullable": True})
    sales = _sales(6, 4)
    ids = logs.predict(sales, version="3", at=START)
    logs.report(ids, sales[spec.target.name].tolist(), at=START)

    rows = window_feedback(
        logs.state, added, model_version="3", start=START, end=START + timedelta(minutes=1)
    )

    assert list(rows.columns) == [*added.feature_names, added.target.name]
    assert len(rows) == 6
    assert rows["year_built"].isna().all()
    expected = sales[spec.feature_names].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows[spec.feature_names], expected, check_dtype=False)


def test_labelled_rows_keep_each_record_once(spec: DatasetSpec) -> None:
    sales = _sales(4, 1)
    twice = pd.concat([sales, sales.head(2)], ignore_index=True)
    assert len(labelled_rows(twice, spec)) == 4


class _Doubler:
    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["median_income"].to_numpy() * 2


def test_reference_is_a_seeded_sample_with_the_models_predictions(
    tmp_path: Path, spec: DatasetSpec
) -> None:
    training = _sales(300, 1)
    first = reference_frame(training, _Doubler(), spec, rows=100, seed=7)
    again = reference_frame(training, _Doubler(), spec, rows=100, seed=7)
    assert len(first) == 100
    pd.testing.assert_frame_equal(first, again)
    np.testing.assert_allclose(first["prediction"], first["median_income"] * 2)
    assert len(reference_frame(training, _Doubler(), spec, rows=1000, seed=7)) == 300

    built: list[int] = []

    def build() -> pd.DataFrame:
        built.append(1)
        return first

    stored = cached_reference(ObjectStore.folder(tmp_path), model_version="4", build=build)
    cached = cached_reference(ObjectStore.folder(tmp_path), model_version="4", build=build)
    assert built == [1]  # built once per version, then read back
    pd.testing.assert_frame_equal(stored, cached)


def test_window_by_event_time_checks_the_latest_sales_whenever_they_were_predicted(
    tmp_path: Path, spec: DatasetSpec
) -> None:
    """Last year's sales scored in one batch today are last year's to the monitor: with
    ``by_event_time`` the window is the most recent sales as the requests dated them (their
    prediction time where they sent none), and ``since`` counts in sale time too."""
    dated = DatasetSpec.model_validate(
        spec.model_dump(mode="json") | {"event_time": {"column": "sold_on"}}
    )
    logs = Logs(tmp_path, dated)

    def predict(sales: pd.DataFrame, *, at: datetime, sold: list[str | None]) -> list[str]:
        ids = [f"{at:%H%M%S}-{i}" for i in range(len(sales))]
        columns = {name: sales[name].tolist() for name in dated.feature_names}
        logs.predictions.put(
            Entry(
                at=at,
                model_name="housing-price",
                model_version="2",
                prediction_ids=ids,
                predictions=np.full(len(sales), 200_000.0),
                columns=columns | {"sold_on": sold},
            )
        )
        logs.predictions.flush()
        return ids

    recent = predict(_sales(10, 1), at=START, sold=["2026-04-20"] * 10)
    backfill = predict(_sales(10, 2), at=START + timedelta(minutes=5), sold=["2025-03-01"] * 10)
    undated = predict(_sales(5, 3), at=START + timedelta(minutes=6), sold=[None] * 5)

    by_sale, window = champion_window(
        logs.state, dated, model_version="2", rows=15, by_event_time=True
    )
    assert by_sale["prediction_id"].tolist() == recent + undated  # the backfill is older
    assert window.rows == 15
    by_prediction, _ = champion_window(logs.state, dated, model_version="2", rows=15)
    assert by_prediction["prediction_id"].tolist() == backfill + undated
    since, _ = champion_window(
        logs.state,
        dated,
        model_version="2",
        rows=100,
        since=datetime(2026, 1, 1, tzinfo=UTC),
        by_event_time=True,
    )
    assert set(since["prediction_id"]) == set(recent + undated)
