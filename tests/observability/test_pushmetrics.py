"""``lakeloop.pushmetrics`` against a real Pushgateway: what a group holds after each push,
counts carried across pushes, and a Pushgateway that is not there."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, Gauge

from lakeloop import pushmetrics
from monitoring.store import push_heartbeat
from tests.utils.net import free_port
from tests.utils.prometheus import pushgateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with pushgateway(tmp_path_factory.mktemp("pushgateway")) as url:
        yield url


def group(url: str, job: str, **key: str) -> pushmetrics.Group:
    return pushmetrics.read_group(url, job=job, grouping_key=key)


def one(found: pushmetrics.Group, name: str, **labels: str) -> float:
    return found[name][frozenset(labels.items())]


def test_training_counts_runs_and_keeps_the_last_promotion_time(gateway: str) -> None:
    def push(version: str, *, promoted: bool, trigger: str, now: float) -> None:
        assert pushmetrics.push_training(
            gateway,
            model_name="counting",
            version=version,
            metrics={"mae": 30_000.0 + now, "rmse": 44_000.0},
            promoted=promoted,
            trigger=trigger,
            now=now,
        )

    push("1", promoted=True, trigger="commit", now=100.0)
    push("2", promoted=False, trigger="drift", now=200.0)
    push("3", promoted=True, trigger="drift", now=300.0)
    push("4", promoted=False, trigger="drift", now=400.0)

    found = group(gateway, pushmetrics.TRAINING_JOB, model_name="counting")
    runs = "lakeloop_training_runs_total"
    assert one(found, runs, trigger="commit", promoted="true") == 1
    assert one(found, runs, trigger="drift", promoted="true") == 1
    assert one(found, runs, trigger="drift", promoted="false") == 2
    assert one(found, "lakeloop_training_last_promotion_timestamp_seconds") == 300.0
    assert one(found, "lakeloop_training_last_run_timestamp_seconds") == 400.0
    assert one(found, "lakeloop_training_model_version") == 4
    assert one(found, "lakeloop_training_promoted") == 0
    assert one(found, "lakeloop_training_holdout_metric", metric="mae") == 30_400.0
    assert "lakeloop_training_runs_created" not in found  # no per-push "counter restarted"


def test_feedback_checks_count_windows_held_back_and_folded(gateway: str) -> None:
    for folded, factor, now in ((True, 0.9, 100.0), (False, 1.5, 200.0), (False, None, 300.0)):
        assert pushmetrics.push_feedback_check(
            gateway, model_name="counting", folded=folded, factor=factor, now=now
        )
    found = group(gateway, pushmetrics.FEEDBACK_JOB, model_name="counting")
    assert one(found, "lakeloop_feedback_windows_total", folded="true") == 1
    assert one(found, "lakeloop_feedback_windows_total", folded="false") == 2
    assert "lakeloop_feedback_label_factor" not in found  # the last check measured none
    assert one(found, "lakeloop_feedback_last_check_timestamp_seconds") == 300.0


def test_validation_replaces_the_last_result_and_counts_outcomes(gateway: str) -> None:
    for commit, success in (("c1", True), ("c2", False), ("c3", True)):
        assert pushmetrics.push_validation(
            gateway,
            dataset="counting",
            commit_id=commit,
            success=success,
            failed_expectations=0 if success else 3,
            rows=500,
        )
    found = group(gateway, pushmetrics.VALIDATION_JOB, dataset="counting")
    assert one(found, "lakeloop_validation_runs_total", outcome="passed") == 2
    assert one(found, "lakeloop_validation_runs_total", outcome="failed") == 1
    assert one(found, "lakeloop_validation_success") == 1
    assert one(found, "lakeloop_validation_failed_expectations") == 0
    # Only the last commit: one series at a time, whatever the number of commits.
    assert found["lakeloop_validation_commit_info"] == {frozenset({("commit_id", "c3")}): 1.0}


def test_groups_of_other_models_are_left_alone(gateway: str) -> None:
    for model in ("left", "right"):
        pushmetrics.push_training(
            gateway, model_name=model, version="1", metrics={}, promoted=True, trigger="manual"
        )
    pushmetrics.push_training(
        gateway, model_name="left", version="2", metrics={}, promoted=True, trigger="manual"
    )
    right = group(gateway, pushmetrics.TRAINING_JOB, model_name="right")
    assert one(right, "lakeloop_training_runs_total", trigger="manual", promoted="true") == 1


def test_no_url_pushes_nothing() -> None:
    assert not pushmetrics.push_validation(
        None, dataset="d", commit_id="c", success=True, failed_expectations=0, rows=1
    )
    assert not pushmetrics.push_training(
        None, model_name="m", version="1", metrics={}, promoted=False, trigger="manual"
    )


def test_a_pushgateway_that_is_down_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="lakeloop.pushmetrics"):
        pushed = pushmetrics.push_training(
            url, model_name="m", version="1", metrics={}, promoted=True, trigger="commit"
        )
    assert not pushed
    assert "not pushed to the Pushgateway" in caplog.text


def test_replace_group_is_the_monitors_push_too(gateway: str) -> None:
    registry = CollectorRegistry()
    Gauge("lakeloop_drift_share", "share", registry=registry).set(0.25)
    pushmetrics.replace_group(
        gateway, registry, job="lakeloop_monitor", grouping_key={"model_version": "9"}
    )
    found = group(gateway, "lakeloop_monitor", model_version="9")
    assert one(found, "lakeloop_drift_share") == 0.25


def test_a_monitor_heartbeat_keeps_the_drift_numbers_and_moves_the_push_time(
    gateway: str,
) -> None:
    registry = CollectorRegistry()
    Gauge("lakeloop_drift_share", "share", registry=registry).set(0.4)
    pushmetrics.replace_group(
        gateway, registry, job="lakeloop_monitor", grouping_key={"model_version": "12"}
    )
    pushed_at = one(group(gateway, "lakeloop_monitor", model_version="12"), "push_time_seconds")
    later = datetime.now(UTC)
    assert push_heartbeat(gateway, champion_version="12", now=later, holdout={"mae": 30_000.0})
    found = group(gateway, "lakeloop_monitor", model_version="12")
    assert one(found, "lakeloop_drift_share") == 0.4
    assert one(found, "lakeloop_champion_holdout_metric", metric="mae") == 30_000.0
    assert one(found, "lakeloop_monitor_last_attempt_timestamp_seconds") == later.timestamp()
    assert one(found, "push_time_seconds") >= pushed_at
    assert not push_heartbeat(None, champion_version="12", now=later)
