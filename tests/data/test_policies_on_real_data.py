"""The drift policy and the promotion gate, with their defaults, on the real California housing
table (not the synthetic market they were developed on).

A champion is trained on the real table as a training run would train it (the whole table, the
row-hash split, ``TrainingSettings()``); the monitor step (Evidently, parse, persist, decide) then
compares windows of that table with the champion's reference under the default ``DriftPolicy``:
- a random split of the table (the champion's holdout, rows it never saw, with their prices as
  feedback; and two seeded random halves) is the same market: no feature drifts, no retrain;
- a real shift, the inland block groups against the rest of the state, is flagged and asks for a
  retrain, naming what moved;
and the gate with the description's bars promotes the champion, and refuses a model that learned
nothing from the same table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lakeloop import model
from lakeloop.dataset import DatasetSpec
from lakeloop.settings import DriftPolicy, TrainingSettings
from lakeloop.stores.objects import ObjectStore
from monitoring.check import CheckResult
from monitoring.reference import reference_frame
from tests.utils.monitor import check as checked
from tests.utils.real_data import read_california

POLICY = DriftPolicy()
TRAINING = TrainingSettings()
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ROWS = 20_640  # block groups in the 1990 census table
INLAND = "INLAND"


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    table = read_california()
    assert len(table) == ROWS
    return table


@pytest.fixture(scope="module")
def champion(real: pd.DataFrame, spec: DatasetSpec) -> model.TrainedModel:
    """The model a training run of the real table makes, with the default settings."""
    return model.train(real, spec, TRAINING)


def predicted(frame: pd.DataFrame, champion: model.TrainedModel, spec: DatasetSpec) -> pd.DataFrame:
    """Rows as the prediction log holds them: features and the champion's prediction."""
    return frame[spec.feature_names].assign(
        prediction=champion.pipeline.predict(frame[spec.feature_names])
    )


def reference_of(
    frame: pd.DataFrame, champion: model.TrainedModel, spec: DatasetSpec
) -> pd.DataFrame:
    """The reference the monitor builds from training data (at most 20,000 rows, seeded)."""
    return reference_frame(frame, champion.pipeline, spec, rows=20_000, seed=TRAINING.seed)


def monitor(
    current: pd.DataFrame, reference: pd.DataFrame, *, folder: Path, sent: list[Any], **options: Any
) -> CheckResult:
    """One monitor step with the default policy, as the monitor flow runs it."""
    return checked(
        current,
        reference,
        store=ObjectStore.folder(folder),
        now=NOW,
        policy=POLICY,
        send=sent.append,
        **options,
    )


def test_the_champions_unseen_rows_show_no_drift_and_ask_for_no_retrain(
    real: pd.DataFrame, champion: model.TrainedModel, spec: DatasetSpec, tmp_path: Path
) -> None:
    holdout = champion.holdout
    trained_on = real.drop(index=holdout.index)
    assert len(holdout) == champion.holdout_rows
    assert len(trained_on) == ROWS - champion.holdout_rows
    # The window as the monitor reads it once the feedback prices arrived.
    window = predicted(holdout, champion, spec).assign(
        **{spec.target.name: holdout[spec.target.name]}
    )
    sent: list[dict[str, object]] = []

    result = monitor(
        window,
        reference_of(trained_on, champion, spec),
        spec=spec,
        folder=tmp_path,
        window_id="holdout",
        sent=sent,
        baseline={"mae": champion.metrics["mae"]},
    )

    entry = result.entry
    assert entry.drift.drifted_features == []
    assert entry.drift.drift_share == 0.0
    assert entry.drift.prediction is not None
    assert not entry.drift.prediction.drifted
    # The feedback error on these rows is the holdout error the champion was judged on.
    assert entry.quality is not None
    assert entry.quality.rows == champion.holdout_rows
    assert entry.quality.mae == pytest.approx(champion.metrics["mae"], rel=1e-6)
    assert not entry.decision.retrain
    assert entry.decision.reason.startswith(
        f"no trigger: drift share 0.00 < {POLICY.drift_share_threshold:.2f}"
    )
    assert result.event is None
    assert sent == []


@pytest.mark.parametrize("seed", [11, 12])
def test_two_random_halves_of_the_real_table_show_no_drift_and_ask_for_no_retrain(
    real: pd.DataFrame,
    champion: model.TrainedModel,
    spec: DatasetSpec,
    tmp_path: Path,
    seed: int,
) -> None:
    in_current = np.random.default_rng(seed).permutation(ROWS) < ROWS // 2
    current, reference = real[in_current], real[~in_current]
    sent: list[dict[str, object]] = []

    result = monitor(
        predicted(current, champion, spec),
        reference_of(reference, champion, spec),
        spec=spec,
        folder=tmp_path,
        window_id=f"half-{seed}",
        sent=sent,
    )

    entry = result.entry
    assert entry.drift.rows_current == ROWS // 2
    assert entry.drift.rows_reference == ROWS - ROWS // 2
    assert entry.drift.drifted_features == []
    assert entry.drift.prediction is not None
    assert not entry.drift.prediction.drifted
    assert not entry.decision.retrain
    assert result.event is None
    assert sent == []


def test_the_inland_region_against_the_rest_of_the_state_is_flagged_and_asks_for_a_retrain(
    real: pd.DataFrame, champion: model.TrainedModel, spec: DatasetSpec, tmp_path: Path
) -> None:
    inland = real["ocean_proximity"] == INLAND
    current = predicted(real[inland], champion, spec)
    sent: list[dict[str, object]] = []

    result = monitor(
        current,
        reference_of(real[~inland], champion, spec),
        spec=spec,
        folder=tmp_path,
        window_id="inland",
        sent=sent,
    )

    drift = result.entry.drift
    assert drift.rows_current == int(inland.sum())
    # Where the block groups are, the class that says so, how old and how rich they are: what
    # separates inland California from the coast.
    assert {"longitude", "latitude", "ocean_proximity", "housing_median_age", "median_income"} <= (
        set(drift.drifted_features)
    )
    assert drift.drift_share >= POLICY.drift_share_threshold
    # Inland prices are about half the coast's: the champion's predictions move with them.
    assert drift.prediction is not None
    assert drift.prediction.drifted
    decision = result.entry.decision
    assert decision.retrain
    assert decision.reason.startswith("drift share")
    assert "prediction drift" in decision.reason
    assert result.event is not None
    assert sent == [result.event]
    assert result.event["event"] == "lakeloop.drift.detected"


def test_the_gate_with_its_defaults_promotes_a_model_trained_on_the_real_table(
    champion: model.TrainedModel, spec: DatasetSpec
) -> None:
    bars = model.thresholds(spec, TRAINING)
    # The description's bars, untouched by any setting.
    assert (bars.max_mae, bars.max_rmse) == (45_000, 70_000)
    assert champion.holdout_rows + champion.train_rows == ROWS
    # Judged against always predicting the median, too.
    assert "baseline_mae" in champion.metrics
    assert model.gate_failures(champion.metrics, TRAINING, bars=bars) == []


def test_the_gate_with_its_defaults_refuses_a_model_that_learned_nothing_from_the_real_table(
    real: pd.DataFrame, spec: DatasetSpec
) -> None:
    # The same table with the prices shuffled across block groups: nothing to learn.
    target = spec.target.name
    shuffled = real.assign(**{target: real[target].sample(frac=1.0, random_state=3).to_numpy()})
    guessed = model.train(shuffled, spec, TRAINING)

    failures = model.gate_failures(guessed.metrics, TRAINING, bars=model.thresholds(spec, TRAINING))

    assert any("the MAE of always predicting the training median" in reason for reason in failures)
    assert any(reason.startswith("MAE ") and "> threshold" in reason for reason in failures)
