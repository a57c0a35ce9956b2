"""Real Evidently 0.7 on synthetic market windows, a small real model's predictions, and a real
Pushgateway on loopback (when Debian's ``prometheus-pushgateway`` is installed)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from lakeloop.dataset import DatasetSpec
from lakeloop.model import TrainedModel
from lakeloop.settings import DriftPolicy
from lakeloop.stores.objects import ObjectStore
from monitoring.check import CheckResult
from monitoring.drift import run_drift
from monitoring.parse import DriftSummary, parse_drift
from monitoring.store import read_history
from tests.utils import monitor, prometheus
from tooling import market

pytestmark = pytest.mark.integration

POLICY = DriftPolicy()
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
WINDOW_ROWS = 2000
LOCATION = {"longitude", "latitude", "housing_median_age", "ocean_proximity"}


def predicted(frame: pd.DataFrame, model: TrainedModel, spec: DatasetSpec) -> pd.DataFrame:
    """The frame as the prediction log holds it: features, the model's prediction, the actual."""
    return frame.assign(prediction=model.pipeline.predict(frame[spec.feature_names]))


@pytest.fixture(scope="module")
def reference(
    market_batch: pd.DataFrame, tiny_model: TrainedModel, spec: DatasetSpec
) -> pd.DataFrame:
    """The champion's training data, with its own predictions so prediction drift is measured."""
    return predicted(market_batch, tiny_model, spec)


def window(spec: DatasetSpec, model: TrainedModel, *, seed: int, **scenario: float) -> pd.DataFrame:
    batch = market.generate_batch(rows=WINDOW_ROWS, seed=seed, scenario=market.Scenario(**scenario))
    return predicted(batch, model, spec)


def drift_of(current: pd.DataFrame, reference: pd.DataFrame, spec: DatasetSpec) -> DriftSummary:
    run = run_drift(current=current, reference=reference, spec=spec)
    return parse_drift(
        run.result,
        features=spec.feature_names,
        rows_current=run.rows_current,
        rows_reference=run.rows_reference,
    )


def test_stable_window_shows_no_drift(
    reference: pd.DataFrame, tiny_model: TrainedModel, spec: DatasetSpec
) -> None:
    summary = drift_of(window(spec, tiny_model, seed=101), reference, spec)
    assert not summary.dataset_drift
    assert summary.drift_share < POLICY.drift_share_threshold
    assert summary.rows_current == WINDOW_ROWS
    assert summary.rows_reference == len(reference)
    assert set(summary.per_feature) == set(spec.feature_names)
    assert summary.prediction is not None


def test_income_shift_names_median_income(
    reference: pd.DataFrame, tiny_model: TrainedModel, spec: DatasetSpec
) -> None:
    summary = drift_of(window(spec, tiny_model, seed=102, income_multiplier=1.5), reference, spec)
    assert "median_income" in summary.drifted_features
    # Income drives the price, so the predictions move with it.
    assert summary.prediction is not None
    assert summary.prediction.drifted


def test_new_region_names_location_columns(
    reference: pd.DataFrame, tiny_model: TrainedModel, spec: DatasetSpec
) -> None:
    summary = drift_of(window(spec, tiny_model, seed=103, new_region_share=0.5), reference, spec)
    assert summary.drift_share >= POLICY.drift_share_threshold
    assert LOCATION.issubset(summary.drifted_features)


def test_income_and_new_region_window_passes_the_threshold(
    reference: pd.DataFrame, tiny_model: TrainedModel, spec: DatasetSpec
) -> None:
    shifted = window(spec, tiny_model, seed=104, income_multiplier=1.5, new_region_share=0.5)
    summary = drift_of(shifted, reference, spec)
    assert summary.drift_share >= POLICY.drift_share_threshold
    assert {"median_income", *LOCATION}.issubset(summary.drifted_features)


def check(
    current: pd.DataFrame, reference: pd.DataFrame, *, folder: Path, **options: Any
) -> CheckResult:
    """One monitor step at ``NOW`` under the default policy, its store in ``folder``."""
    return monitor.check(
        current,
        reference,
        store=ObjectStore.folder(folder),
        now=options.pop("now", NOW),
        policy=POLICY,
        **options,
    )


def test_whole_step_retrains_on_shift_only_once_per_cooldown(
    reference: pd.DataFrame, tiny_model: TrainedModel, spec: DatasetSpec, tmp_path: Path
) -> None:
    sent: list[dict[str, Any]] = []
    features_only = [*spec.feature_names, "prediction"]  # no feedback prices yet
    stable = window(spec, tiny_model, seed=105)[features_only]
    shifted = window(spec, tiny_model, seed=106, new_region_share=0.5)[features_only]

    calm = check(stable, reference, spec=spec, folder=tmp_path, window_id="w1", send=sent.append)
    assert not calm.entry.decision.retrain
    assert calm.entry.decision.reason.startswith("no trigger: drift share")
    assert calm.event is None
    assert Path(calm.report_path).exists()
    assert "<html" in Path(calm.report_path).read_text()[:2000].lower()

    fired = check(shifted, reference, spec=spec, folder=tmp_path, window_id="w2", send=sent.append)
    assert fired.entry.decision.retrain
    assert fired.event is not None
    assert sent == [fired.event]
    assert fired.event["payload"]["report_path"] == fired.report_path

    later = NOW + timedelta(minutes=10)
    held = check(
        shifted, reference, spec=spec, folder=tmp_path, window_id="w3", now=later, send=sent.append
    )
    assert not held.entry.decision.retrain
    assert "in cooldown" in held.entry.decision.reason
    assert len(sent) == 1
    assert [entry.window.id for entry in read_history(ObjectStore.folder(tmp_path))] == [
        "w1",
        "w2",
        "w3",
    ]


def test_whole_step_retrains_on_rising_error(
    reference: pd.DataFrame, tiny_model: TrainedModel, spec: DatasetSpec, tmp_path: Path
) -> None:
    baseline = {"mae": tiny_model.metrics["mae"]}
    same_prices = window(spec, tiny_model, seed=107)
    dearer = window(spec, tiny_model, seed=108, price_inflation=1.4)

    steady = check(
        same_prices, reference, spec=spec, folder=tmp_path, window_id="q1", baseline=baseline
    )
    assert steady.entry.quality is not None
    assert steady.entry.quality.rows == WINDOW_ROWS
    assert not steady.entry.decision.retrain, steady.entry.decision.reason

    rising = check(dearer, reference, spec=spec, folder=tmp_path, window_id="q2", baseline=baseline)
    assert rising.entry.decision.retrain
    assert "vs the champion's holdout MAE" in rising.entry.decision.reason
    # Same features: the error rose with no covariate drift at all.
    assert rising.entry.drift.drift_share < POLICY.drift_share_threshold


def test_undelivered_event_is_not_recorded_as_a_retrain(
    reference: pd.DataFrame, tiny_model: TrainedModel, spec: DatasetSpec, tmp_path: Path
) -> None:
    def refuse(event: dict[str, Any]) -> None:
        raise ConnectionError("Prefect is down")

    shifted = window(spec, tiny_model, seed=109, new_region_share=0.5)
    with pytest.raises(ConnectionError):
        check(shifted, reference, spec=spec, folder=tmp_path, window_id="w1", send=refuse)
    (recorded,) = read_history(ObjectStore.folder(tmp_path))
    assert not recorded.decision.retrain
    assert recorded.decision.reason.endswith("event not delivered: Prefect is down")


# --- Pushgateway -------------------------------------------------------------------------------


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    with prometheus.pushgateway(tmp_path) as url:
        yield url


def test_numbers_reach_the_pushgateway(
    pushgateway: str,
    reference: pd.DataFrame,
    tiny_model: TrainedModel,
    spec: DatasetSpec,
    tmp_path: Path,
) -> None:
    shifted = window(spec, tiny_model, seed=110, new_region_share=0.5)
    result = check(
        shifted,
        reference,
        spec=spec,
        folder=tmp_path,
        window_id="p1",
        baseline={"mae": tiny_model.metrics["mae"]},
        pushgateway_url=pushgateway,
    )
    page = httpx.get(f"{pushgateway}/metrics", timeout=5).text
    group = 'instance="",job="lakeloop_monitor",model_version="1"'
    share = result.entry.drift.drift_share
    assert f"lakeloop_drift_share{{{group}}} {share}" in page
    assert f'lakeloop_feature_drifted{{feature="latitude",{group}}} 1' in page
    assert f'lakeloop_monitor_window_rows{{frame="current",{group}}} {WINDOW_ROWS}' in page
    assert f"lakeloop_quality_mae{{{group}}}" in page
    assert f"lakeloop_retrain_decision{{{group}}} 1" in page
    assert "lakeloop_prediction_drift_score{" in page
