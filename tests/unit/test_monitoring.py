"""Monitoring without Evidently: the parser on trimmed real results, the policy on hand-built
numbers (one test per branch, each checking its reason), the history file and the event."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import generate_latest

from lakeloop.dataset import load_spec
from lakeloop.events import DRIFT_DETECTED, event_id
from lakeloop.settings import DriftPolicy
from lakeloop.stores.objects import ObjectStore
from monitoring.events import drift_event
from monitoring.history import Decision, HistoryEntry, Window
from monitoring.parse import (
    ColumnDrift,
    DriftSummary,
    ParseError,
    QualitySummary,
    is_drift,
    parse_drift,
    parse_quality,
)
from monitoring.policy import decide, last_retrain, mae_increase
from monitoring.store import (
    append_history,
    describe,
    metrics_registry,
    read_history,
    save_report,
)

FIXTURE = Path(__file__).parent / "fixtures" / "evidently_drift.json"
FEATURES = load_spec().feature_names
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
POLICY = DriftPolicy()


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


# --- parse -------------------------------------------------------------------------------------


def test_parse_distance_result_names_the_moved_columns(results: dict[str, Any]) -> None:
    summary = parse_drift(
        results["drift_distance"], features=FEATURES, rows_current=2000, rows_reference=2000
    )
    assert summary.drift_share == pytest.approx(4 / 9)
    assert summary.drifted_features == [
        "longitude",
        "latitude",
        "housing_median_age",
        "ocean_proximity",
    ]
    assert summary.dataset_drift is False  # 0.44 < Evidently's default share of 0.5
    latitude = summary.per_feature["latitude"]
    assert latitude.method == "Wasserstein distance (normed)"
    assert latitude.threshold == 0.1
    assert latitude.drifted
    assert summary.per_feature["ocean_proximity"].method == "Jensen-Shannon distance"
    assert summary.prediction is not None
    assert summary.prediction_drift == pytest.approx(0.43488, abs=1e-4)
    assert (summary.rows_current, summary.rows_reference) == (2000, 2000)


def test_parse_p_value_result_reads_small_p_values_as_drift(results: dict[str, Any]) -> None:
    summary = parse_drift(
        results["drift_p_value"], features=FEATURES, rows_current=600, rows_reference=600
    )
    assert summary.drifted_features == ["median_income"]
    assert summary.drift_share == pytest.approx(1 / 9)
    assert summary.per_feature["median_income"].method == "K-S p_value"
    assert summary.per_feature["median_income"].score < 1e-20
    assert not summary.per_feature["longitude"].drifted  # p = 0.53: no drift
    assert summary.prediction is None  # the run had no prediction column
    assert summary.prediction_drift is None


def test_parse_reports_dataset_drift_from_the_reports_own_share(
    results: dict[str, Any],
) -> None:
    result = copy.deepcopy(results["drift_distance"])
    for metric in result["metrics"]:
        if metric["config"]["type"].endswith("DriftedColumnsCount"):
            metric["config"]["drift_share"] = 0.3
    summary = parse_drift(result, features=FEATURES, rows_current=1, rows_reference=1)
    assert summary.dataset_drift is True


def test_parse_rejects_a_count_that_disagrees_with_the_scores(results: dict[str, Any]) -> None:
    result = copy.deepcopy(results["drift_distance"])
    for metric in result["metrics"]:
        if metric["config"]["type"].endswith("DriftedColumnsCount"):
            metric["value"]["count"] = 1.0
    with pytest.raises(ParseError, match="counts 1 drifted features"):
        parse_drift(result, features=FEATURES, rows_current=1, rows_reference=1)


def test_parse_rejects_a_missing_feature(results: dict[str, Any]) -> None:
    with pytest.raises(ParseError, match="no drift result for features: rooms_per_person"):
        parse_drift(
            results["drift_distance"],
            features=[*FEATURES, "rooms_per_person"],
            rows_current=1,
            rows_reference=1,
        )


def test_parse_rejects_a_result_without_metrics() -> None:
    with pytest.raises(ParseError, match="'metrics' list"):
        parse_drift({}, features=FEATURES, rows_current=1, rows_reference=1)


def test_unknown_drift_method_is_refused_not_guessed() -> None:
    with pytest.raises(ParseError, match="unknown Evidently drift method 'my test'"):
        is_drift(score=0.5, method="my test", threshold=0.1)


@pytest.mark.parametrize(
    ("score", "method", "threshold", "drifted"),
    [
        (0.01, "K-S p_value", 0.05, True),
        (0.05, "K-S p_value", 0.05, False),
        (0.10, "Wasserstein distance (normed)", 0.1, True),
        (0.09, "Jensen-Shannon distance", 0.1, False),
        (0.30, "PSI", 0.1, True),
    ],
)
def test_drift_direction_follows_the_method(
    score: float, method: str, threshold: float, drifted: bool
) -> None:
    assert is_drift(score=score, method=method, threshold=threshold) is drifted


def test_parse_quality_reads_mae_mean_and_rmse(results: dict[str, Any]) -> None:
    quality = parse_quality(results["quality"], rows=2000)
    assert quality.mae == pytest.approx(14101.15, abs=0.01)
    assert quality.rmse == pytest.approx(17629.36, abs=0.01)
    assert quality.rows == 2000


# --- policy ------------------------------------------------------------------------------------


def drift_summary(*, share: float, rows: int = 1000) -> DriftSummary:
    drifted = FEATURES[: round(share * len(FEATURES))]
    per_feature = {
        name: ColumnDrift(
            score=0.5 if name in drifted else 0.01,
            method="Wasserstein distance (normed)",
            threshold=0.1,
            drifted=name in drifted,
        )
        for name in FEATURES
    }
    return DriftSummary(
        drift_share=share,
        drifted_features=drifted,
        per_feature=per_feature,
        prediction=None,
        dataset_drift=share >= 0.5,
        rows_current=rows,
        rows_reference=20_000,
    )


def entry(
    *, time: datetime, retrain: bool, champion_version: str = "3", share: float = 0.5
) -> HistoryEntry:
    return HistoryEntry(
        time=time,
        champion_version=champion_version,
        window=Window(id=f"w-{time.isoformat()}", rows=1000),
        drift=drift_summary(share=share),
        quality=None,
        decision=Decision(retrain=retrain, reason="test"),
    )


def run_policy(
    *,
    share: float = 0.0,
    rows: int = 1000,
    quality: QualitySummary | None = None,
    baseline: dict[str, float] | None = None,
    history: list[HistoryEntry] | None = None,
    running: bool = False,
) -> Decision:
    return decide(
        drift=drift_summary(share=share, rows=rows),
        quality=quality,
        baseline_quality=baseline,
        history=history or [],
        now=NOW,
        policy=POLICY,
        champion_version="3",
        retrain_running=running,
    )


def test_stable_window_does_not_retrain() -> None:
    decision = run_policy(share=1 / 9)
    assert not decision.retrain
    assert decision.reason == (
        "no trigger: drift share 0.11 < 0.30; no feedback prices for the window"
    )


def test_drift_share_at_threshold_retrains_and_names_features() -> None:
    decision = run_policy(share=3 / 9)
    assert decision.retrain
    assert decision.reason == ("drift share 0.33 >= 0.30 (longitude, latitude, housing_median_age)")


def test_drift_on_too_few_rows_does_not_retrain() -> None:
    decision = run_policy(share=5 / 9, rows=499)
    assert not decision.retrain
    assert "drift share 0.56 >= 0.30 but the window has only 499 rows (< 500)" in decision.reason


def test_mae_increase_retrains() -> None:
    decision = run_policy(
        quality=QualitySummary(mae=50_000, rmse=70_000, rows=800), baseline={"mae": 40_000}
    )
    assert decision.retrain
    assert decision.reason == "MAE 50,000 is +25% vs the champion's holdout MAE (>= +20%)"


def test_small_mae_increase_does_not_retrain() -> None:
    decision = run_policy(
        quality=QualitySummary(mae=44_000, rmse=60_000, rows=800), baseline={"mae": 40_000}
    )
    assert not decision.retrain
    assert "MAE 44,000 is +10% vs the champion's holdout MAE (< +20%)" in decision.reason


def test_mae_increase_on_too_few_feedback_rows_does_not_retrain() -> None:
    decision = run_policy(
        quality=QualitySummary(mae=60_000, rmse=80_000, rows=120), baseline={"mae": 40_000}
    )
    assert not decision.retrain
    assert "but only 120 rows have feedback (< 500)" in decision.reason


def test_feedback_without_a_baseline_is_said_so() -> None:
    decision = run_policy(quality=QualitySummary(mae=60_000, rmse=80_000, rows=800))
    assert not decision.retrain
    assert "no champion holdout MAE to compare the window's MAE with" in decision.reason


def test_both_triggers_are_named() -> None:
    decision = run_policy(
        share=4 / 9,
        quality=QualitySummary(mae=60_000, rmse=80_000, rows=800),
        baseline={"mae": 40_000},
    )
    assert decision.retrain
    assert decision.reason.startswith("drift share 0.44 >= 0.30")
    assert decision.reason.endswith(
        " and MAE 60,000 is +50% vs the champion's holdout MAE (>= +20%)"
    )


def test_running_retrain_for_this_champion_blocks() -> None:
    decision = run_policy(share=5 / 9, running=True)
    assert not decision.retrain
    assert decision.reason.endswith("but a retrain for champion 3 is already running")


def test_cooldown_after_any_champions_retrain_blocks() -> None:
    history = [entry(time=NOW - timedelta(minutes=20), retrain=True, champion_version="2")]
    decision = run_policy(share=5 / 9, history=history)
    assert not decision.retrain
    assert "in cooldown: the last retrain decision was at 2025-06-01T11:40:00+00:00" in (
        decision.reason
    )
    assert "(champion 2); next allowed after 2025-06-01T12:40:00+00:00" in decision.reason


def test_cooldown_passed_retrains_again() -> None:
    history = [
        entry(time=NOW - timedelta(hours=3), retrain=True),
        # Runs that did not retrain do not start a cooldown.
        entry(time=NOW - timedelta(minutes=5), retrain=False),
    ]
    assert run_policy(share=5 / 9, history=history).retrain


def test_last_retrain_picks_the_latest_decision_in_any_order() -> None:
    early = entry(time=NOW - timedelta(hours=5), retrain=True)
    late = entry(time=NOW - timedelta(hours=2), retrain=True, champion_version="4")
    assert last_retrain([late, early]) is late
    assert last_retrain([entry(time=NOW, retrain=False)]) is None


def test_mae_increase_needs_a_positive_baseline() -> None:
    quality = QualitySummary(mae=10, rmse=10, rows=1)
    assert mae_increase(quality, {"mae": 0.0}) is None
    assert mae_increase(quality, {"rmse": 5.0}) is None
    assert mae_increase(quality, {"mae": 8.0}) == pytest.approx(0.25)


def test_policy_defaults_and_validation() -> None:
    assert POLICY.model_dump() == {
        "drift_share_threshold": 0.3,
        "mae_increase_threshold": 0.2,
        "min_rows": 500,
        "cooldown": timedelta(hours=1),
        "prediction_drift": True,
    }
    with pytest.raises(ValueError, match="drift_share_threshold"):
        DriftPolicy(drift_share_threshold=0)


# --- persist -----------------------------------------------------------------------------------


def test_history_round_trips_and_prints(tmp_path: Path) -> None:
    first = entry(time=NOW - timedelta(hours=1), retrain=True)
    second = HistoryEntry(
        time=NOW,
        champion_version="4",
        window=Window(id="2025-06-01T11:00/1h", start=NOW - timedelta(hours=1), end=NOW, rows=900),
        drift=drift_summary(share=1 / 9, rows=900),
        quality=QualitySummary(mae=41_000, rmse=60_000, rows=700),
        decision=Decision(retrain=False, reason="no trigger: drift share 0.11 < 0.30"),
        report_path="reports/drift-v4-w.html",
    )
    store = ObjectStore.folder(tmp_path)
    assert read_history(store) == []
    append_history(store, second)  # written out of order: read back by time
    path = append_history(store, first)
    assert Path(path).parent == tmp_path / "history"
    assert len(store.list_keys("history")) == 2
    assert read_history(store) == [first, second]
    again = msgspec.structs.replace(second, champion_version="5")  # the same time: kept in order
    append_history(store, again)
    assert read_history(store) == [first, second, again]
    assert describe(second) == (
        "2025-06-01 12:00:00 v4 window=2025-06-01T11:00/1h rows=900 drift_share=0.11 "
        "mae=41,000 ok: no trigger: drift share 0.11 < 0.30"
    )


def test_history_left_in_one_file_by_an_earlier_version_still_counts(tmp_path: Path) -> None:
    """A state folder from before the history was one object per run keeps its cooldown."""
    earlier = entry(time=NOW - timedelta(hours=2), retrain=True)
    (tmp_path / "history.jsonl").write_bytes(msgspec.json.encode(earlier) + b"\n")
    store = ObjectStore.folder(tmp_path)
    later = entry(time=NOW, retrain=False)
    append_history(store, later)
    assert read_history(store) == [earlier, later]


class CountingStore(ObjectStore):
    """A local store that counts the objects it reads."""

    def __init__(self, folder: Path) -> None:
        local = ObjectStore.folder(folder)
        super().__init__(local.fs, local.root, url=local.url)
        self.read: list[str] = []

    def get_many(self, keys: list[str]) -> list[bytes]:
        self.read += keys
        return super().get_many(keys)


def test_a_long_history_is_read_only_as_far_back_as_asked(tmp_path: Path) -> None:
    """A monitor that runs every hour for years reads the runs within its cooldown, not every run
    ever recorded; the CLI's `--last N` reads N."""
    store = CountingStore(tmp_path)
    runs = [
        entry(time=NOW - timedelta(hours=hours), retrain=hours % 5 == 3) for hours in range(200)
    ]
    for run in runs:
        append_history(store, run)
    assert store.read == []
    recent = read_history(store, since=NOW - timedelta(hours=2))
    assert recent == sorted(runs[:3], key=lambda run: run.time)  # 2 h ago, 1 h ago and now
    assert len(store.read) == 3
    assert last_retrain(recent) is None  # the retrain 3 h ago is outside a 2 h cooldown
    assert last_retrain(read_history(store, since=NOW - timedelta(hours=4))) == runs[3]
    store.read.clear()
    assert read_history(store, last=2) == [runs[1], runs[0]]
    assert len(store.read) == 2
    assert len(read_history(store)) == len(runs)


class FakeReport:
    def __init__(self) -> None:
        self.saved: list[str] = []

    def save_html(self, filename: str) -> None:
        self.saved.append(filename)
        Path(filename).write_text("<html></html>")


def test_report_is_saved_under_a_portable_name(tmp_path: Path) -> None:
    report = FakeReport()
    path = save_report(
        ObjectStore.folder(tmp_path),
        report,
        champion_version="7",
        window_id="2025-06-01T11:00:00+00:00/1h",
    )
    expected = tmp_path / "reports" / "drift-v7-2025-06-01T11_00_00_00_00_1h.html"
    assert path == str(expected)
    assert expected.read_text() == "<html></html>"


def test_metrics_registry_exposes_every_number() -> None:
    drift = drift_summary(share=3 / 9)
    registry = metrics_registry(
        drift=drift,
        quality=QualitySummary(mae=41_000, rmse=60_000, rows=700),
        decision=Decision(retrain=True, reason="x"),
        now=NOW,
        holdout={"mae": 38_000, "rmse": 55_000},
    )
    text = generate_latest(registry).decode()
    assert "lakeloop_drift_share 0.333" in text
    assert (
        'lakeloop_feature_drift_score{feature="longitude",method="Wasserstein distance (normed)"}'
        " 0.5" in text
    )
    assert 'lakeloop_feature_drifted{feature="median_income"} 0.0' in text
    assert 'lakeloop_monitor_window_rows{frame="reference"} 20000.0' in text
    assert "lakeloop_quality_mae 41000.0" in text
    assert "lakeloop_retrain_decision 1.0" in text
    # The champion's own holdout, what its live MAE is compared with.
    assert 'lakeloop_champion_holdout_metric{metric="mae"} 38000.0' in text
    assert "lakeloop_prediction_drift_score" not in text  # no prediction drift was measured


# --- event -------------------------------------------------------------------------------------


def test_drift_event_is_deterministic_and_carries_the_numbers() -> None:
    summary = drift_summary(share=4 / 9)
    build: dict[str, Any] = {
        "champion_version": "3",
        "window": Window(id="w1", start=NOW - timedelta(hours=1), end=NOW, rows=600),
        "summary": summary,
        "report_path": "/state/monitoring/reports/drift-v3-w1.html",
        "model_name": "housing-price",
    }
    event = drift_event(**build, occurred=NOW)
    assert event["id"] == event_id(DRIFT_DETECTED, "housing-price", "3", "w1")
    assert uuid.UUID(event["id"]).version == 5
    assert drift_event(**build)["id"] == event["id"]
    assert drift_event(**{**build, "window": Window(id="w2")})["id"] != event["id"]
    assert event["event"] == "lakeloop.drift.detected"
    assert event["occurred"] == "2025-06-01T12:00:00+00:00"
    assert event["resource"]["prefect.resource.id"] == "lakeloop.model.housing-price"
    assert event["resource"]["lakeloop.model_version"] == "3"
    payload = event["payload"]
    assert payload["drift_share"] == pytest.approx(4 / 9)
    assert payload["drifted_features"] == FEATURES[:4]
    assert payload["per_feature"]["longitude"]["method"] == "Wasserstein distance (normed)"
    assert payload["report_path"] == build["report_path"]
    # The retrain reads the window back from these to fold in the prices reported for it.
    assert payload["window_start"] == "2025-06-01T11:00:00+00:00"
    assert payload["window_end"] == "2025-06-01T12:00:00+00:00"
    assert payload["window_rows"] == 600
    json.dumps(event)  # Prefect receives it as JSON


def test_prediction_drift_alone_retrains_when_few_features_drift() -> None:
    """An income-only shift drifts 1 of 9 features but moves the predictions."""
    few = drift_summary(share=0.11)
    shifted = msgspec.structs.replace(
        few,
        prediction=ColumnDrift(
            score=0.4, method="Wasserstein distance (normed)", threshold=0.1, drifted=True
        ),
    )
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    decision = decide(
        drift=shifted,
        quality=None,
        baseline_quality=None,
        history=[],
        now=now,
        policy=DriftPolicy(),
        champion_version="3",
        retrain_running=False,
    )
    assert decision.retrain
    assert decision.reason.startswith("prediction drift (Wasserstein distance (normed) 0.4")
    ignored = decide(
        drift=shifted,
        quality=None,
        baseline_quality=None,
        history=[],
        now=now,
        policy=DriftPolicy(prediction_drift=False),
        champion_version="3",
        retrain_running=False,
    )
    assert not ignored.retrain
