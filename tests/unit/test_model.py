"""Code and behaviour of the training functions (no MLflow, no Prefect)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lakeloop.dataset import DatasetSpec, Thresholds
from lakeloop.model import (
    TrainedModel,
    gate_failures,
    holdout_mask,
    regression_metrics,
    regressor_of,
    score,
    split_rows,
    thresholds,
    train,
    tune,
)
from lakeloop.settings import TrainingSettings
from tooling import market


def test_holdout_is_a_function_of_row_content(
    market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    mask = holdout_mask(market_batch, spec, fraction=0.2)
    shuffled = market_batch.sample(frac=1.0, random_state=3)
    shuffled_mask = holdout_mask(shuffled, spec, fraction=0.2)
    held = set(market_batch[mask].index)
    assert held == set(shuffled[shuffled_mask].index)
    assert 0.15 < mask.mean() < 0.25


def test_metrics_on_known_errors() -> None:
    metrics = regression_metrics(np.array([100.0, 200.0, 300.0]), np.array([110.0, 190.0, 330.0]))
    assert metrics["mae"] == pytest.approx(50 / 3)
    assert metrics["mse"] == pytest.approx((100 + 100 + 900) / 3)
    assert metrics["rmse"] == pytest.approx(np.sqrt(1100 / 3))
    assert metrics["r2"] == pytest.approx(1 - 1100 / 20000)
    assert metrics["mape"] == pytest.approx((0.1 + 0.05 + 0.1) / 3)


def test_model_accepts_raw_records_with_category_strings(
    tiny_model: TrainedModel, spec: DatasetSpec
) -> None:
    records = pd.DataFrame(
        [
            {**_record(), "ocean_proximity": "NEAR BAY"},
            {**_record(), "ocean_proximity": "ON THE MOON"},  # unknown: predicted, not refused
            {**_record(), "total_bedrooms": None},
        ]
    )
    predicted = tiny_model.pipeline.predict(records[list(reversed(spec.feature_names))])
    assert predicted.shape == (3,)
    assert np.isfinite(predicted).all()


def test_richer_district_is_predicted_dearer(tiny_model: TrainedModel) -> None:
    """Direction: with everything else equal, higher income means a higher price."""
    poorer, richer = _record(median_income=2.0), _record(median_income=9.0)
    low, high = tiny_model.pipeline.predict(pd.DataFrame([poorer, richer]))
    assert high > low * 1.2


def test_training_learns_the_market(tiny_model: TrainedModel) -> None:
    assert tiny_model.metrics["r2"] > 0.6
    assert tiny_model.holdout_rows > 300


def test_too_little_data_is_refused_with_counts(
    market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    with pytest.raises(ValueError, match="too few rows"):
        train(market_batch.head(5), spec, TrainingSettings(n_estimators=5))


def test_gate_names_each_threshold_missed() -> None:
    bars = Thresholds(max_mae=100, max_rmse=200, min_r2=0.5, max_mape=0.3)
    good = {"mae": 50, "rmse": 150, "r2": 0.7, "mape": 0.2}
    assert gate_failures(good, TrainingSettings(), bars=bars) == []
    failures = gate_failures(
        {"mae": 150, "rmse": 250, "r2": 0.4, "mape": 0.35}, TrainingSettings(), bars=bars
    )
    assert failures == [
        "MAE 150 > threshold 100",
        "RMSE 250 > threshold 200",
        "MAPE 0.35 > threshold 0.3",
        "R2 0.4 < threshold 0.5",
    ]


def test_the_settings_override_the_descriptions_thresholds(spec: DatasetSpec) -> None:
    assert thresholds(spec, TrainingSettings()) == spec.target.thresholds
    overridden = thresholds(spec, TrainingSettings(max_mae=90_000))
    assert overridden.max_mae == 90_000
    assert overridden.max_rmse == spec.target.thresholds.max_rmse


def test_gate_refuses_a_challenger_worse_than_the_champion_beyond_tolerance() -> None:
    gate = TrainingSettings(champion_tolerance=0.05)
    bars = Thresholds(max_mae=1000, max_rmse=1000)
    champion = {"mae": 100.0, "rmse": 150.0}
    good = {"mae": 104, "rmse": 157, "r2": 0.9, "mape": 0.1}
    assert gate_failures(good, gate, bars=bars, champion=champion) == []
    worse = {"mae": 106, "rmse": 150, "r2": 0.9, "mape": 0.1}
    [reason] = gate_failures(worse, gate, bars=bars, champion=champion, champion_name="v3")
    assert reason.startswith("MAE 106 worse than v3's 100 on the same holdout")


def test_without_thresholds_a_model_must_clearly_beat_predicting_the_median(
    market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    """No hand-set bar: a model that learned from the features passes, one trained on features
    that carry no signal (shuffled against the target) is refused, naming the baseline."""
    gate, bars = TrainingSettings(n_estimators=40), Thresholds()
    learned = train(market_batch, spec, gate)
    assert learned.metrics["mae"] < learned.metrics["baseline_mae"] * 0.9
    assert gate_failures(learned.metrics, gate, bars=bars) == []
    noise = market_batch.assign(
        **{spec.target.name: market_batch[spec.target.name].sample(frac=1, random_state=1).values}
    )
    guessed = train(noise, spec, gate)
    [reason] = gate_failures(guessed.metrics, gate, bars=bars)
    assert "the MAE of always predicting the training median" in reason


def test_champion_is_scored_on_the_challengers_holdout(
    tiny_model: TrainedModel, spec: DatasetSpec
) -> None:
    scored = score(tiny_model.pipeline, tiny_model.holdout, spec)
    assert scored == pytest.approx({name: tiny_model.metrics[name] for name in scored})
    assert set(tiny_model.metrics) - set(scored) == {"baseline_mae"}
    assert len(tiny_model.holdout) == tiny_model.holdout_rows


def _record(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "longitude": -118.3,
        "latitude": 34.1,
        "housing_median_age": 30.0,
        "total_rooms": 2000.0,
        "total_bedrooms": 400.0,
        "population": 1100.0,
        "households": 380.0,
        "median_income": 4.0,
        "ocean_proximity": "<1H OCEAN",
    }
    return base | changes


def test_retraining_the_same_data_gives_the_same_metrics(
    market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    settings = TrainingSettings(n_estimators=30)
    first = train(market_batch, spec, settings)
    again = train(market_batch.sample(frac=1.0, random_state=1), spec, settings)
    assert again.metrics == first.metrics


def test_more_rooms_per_household_never_lowers_the_price_much(tiny_model: TrainedModel) -> None:
    """Direction: a bigger house in the same district is not predicted cheaper (beyond noise)."""
    smaller = _record(total_rooms=1500.0)
    bigger = _record(total_rooms=3500.0)
    low, high = tiny_model.pipeline.predict(pd.DataFrame([smaller, bigger]))
    assert high >= low * 0.95


def test_predictions_stay_within_plausible_prices(
    tiny_model: TrainedModel, market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    predicted = tiny_model.pipeline.predict(market_batch[spec.feature_names])
    assert predicted.min() > 0
    assert predicted.max() < 1_000_000


def test_column_order_does_not_change_predictions(
    tiny_model: TrainedModel, market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    features = market_batch[spec.feature_names].head(50)
    shuffled = features[list(reversed(spec.feature_names))]
    assert (tiny_model.pipeline.predict(features) == tiny_model.pipeline.predict(shuffled)).all()


def test_a_constant_target_is_refused(market_batch: pd.DataFrame, spec: DatasetSpec) -> None:
    flat = market_batch.assign(**{spec.target.name: 250_000.0})
    with pytest.raises(ValueError, match="has a single value"):
        train(flat, spec, TrainingSettings(n_estimators=5))


def test_early_stopping_ends_before_the_round_limit(
    market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    trained = train(market_batch, spec, TrainingSettings(n_estimators=2000, learning_rate=0.3))
    assert regressor_of(trained.pipeline).best_iteration < 1999


# Small enough to tune in a few seconds, wide enough that the trials differ.
TUNING = TrainingSettings(n_estimators=60, tune_trials=4)


def test_tuning_is_deterministic_and_keeps_its_best_trial(
    market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    tuned = tune(market_batch, spec, TUNING)
    again = tune(market_batch.sample(frac=1.0, random_state=2), spec, TUNING)
    assert again.trials == tuned.trials
    assert again.metrics == tuned.metrics
    assert len(tuned.trials) == TUNING.tune_trials
    assert (
        len({tuple(sorted(trial.params.items())) for trial in tuned.trials}) == TUNING.tune_trials
    )
    best = min(tuned.trials, key=lambda trial: trial.metrics["rmse"])
    assert tuned.params == best.params
    # The kept model is the best trial's: refitting its parameters gives the same predictions.
    refit = train(market_batch, spec, TUNING, params=best.params)
    assert (refit.predicted == tuned.predicted).all()


def test_tuning_starts_from_the_untuned_model(
    market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    """Trial 0 is exactly what training without tuning gives, so tuning never picks worse."""
    [untuned_trial, *_] = tune(market_batch, spec, TUNING).trials
    untuned = train(market_batch, spec, TUNING)
    assert untuned_trial.params == untuned.params
    stop_rows = split_rows(market_batch, spec, TUNING).stop
    assert untuned_trial.metrics == score(untuned.pipeline, stop_rows, spec)


def test_tuning_never_looks_at_the_holdout(market_batch: pd.DataFrame, spec: DatasetSpec) -> None:
    """Swap every holdout row for different data: the trials and the choice are unchanged, only
    the final model's holdout scores move."""
    fraction = TUNING.holdout_fraction
    other = market.generate_batch(rows=len(market_batch), seed=99)
    swapped = pd.concat(
        [
            market_batch[~holdout_mask(market_batch, spec, fraction=fraction)],
            other[holdout_mask(other, spec, fraction=fraction)],
        ],
        ignore_index=True,
    )
    tuned = tune(market_batch, spec, TUNING)
    with_other_holdout = tune(swapped, spec, TUNING)
    assert with_other_holdout.trials == tuned.trials
    assert with_other_holdout.params == tuned.params
    assert with_other_holdout.metrics != tuned.metrics


def test_gate_reasons_read_in_the_targets_own_units() -> None:
    """Degrees, not dollars: a champion comparison on a small target keeps its digits."""
    champion = {"mae": 2.47, "rmse": 3.08}
    worse = {"mae": 2.696, "rmse": 3.0, "r2": 0.8, "mape": 0.1}
    [reason] = gate_failures(
        worse, TrainingSettings(), bars=Thresholds(), champion=champion, champion_name="v2"
    )
    assert reason.startswith("MAE 2.7 worse than v2's 2.47 on the same holdout")
