"""The clean holdout: a model trained on folded feedback is also judged on rows that predate it.

Feedback rows are recent, so they sit in the holdout: prices reported wrong would shape the very
rows that judge a model trained on them. The rows that did not come from feedback tables are split
alone by the same rule, and their holdout is kept out of fit and early stopping (no service here:
the split, the gate's reason, the summary, and how the training frame marks feedback rows).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest

from lakeloop import datagate, draft, evaluation, model, rowkeys
from lakeloop.dataset import DatasetSpec, Thresholds
from lakeloop.lakefs_client import StoredTable
from lakeloop.settings import TrainingSettings
from tests.utils.real_data import read_ames
from tooling import market

TRAINING = TrainingSettings()


@pytest.fixture(scope="module")
def ames() -> tuple[pd.DataFrame, DatasetSpec]:
    """The Ames sales, keyed as a training frame keys them, and their drafted description (it
    has an event time: the split is by time)."""
    raw = read_ames()
    spec = draft.draft(raw, target="SalePrice", name="ames").spec
    assert spec.event_time is not None
    return rowkeys.keyed(raw, spec), spec


def _same(first: pd.DataFrame, second: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.parametrize("kind", ["hash", "time"])
def test_data_without_feedback_splits_exactly_as_before(
    kind: str,
    market_batch: pd.DataFrame,
    spec: DatasetSpec,
    ames: tuple[pd.DataFrame, DatasetSpec],
) -> None:
    frame, described = (market_batch, spec) if kind == "hash" else ames
    plain = model.split_rows(frame, described, TRAINING)
    unmarked = model.split_rows(
        frame, described, TRAINING, feedback=np.zeros(len(frame), dtype=bool)
    )
    for part in ("fit", "stop", "holdout"):
        _same(getattr(plain, part), getattr(unmarked, part))
    assert plain.clean_holdout is None
    assert unmarked.clean_holdout is None


def test_hash_split_clean_holdout_is_the_holdouts_clean_rows_and_nothing_moves(
    market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    feedback = market.generate_batch(
        rows=600, seed=8, scenario=market.Scenario(new_region_share=0.5)
    )
    frame = pd.concat([rowkeys.keyed(market_batch, spec), rowkeys.keyed(feedback, spec)])
    marks = np.repeat([False, True], [len(market_batch), len(feedback)])
    plain = model.split_rows(frame, spec, TRAINING)
    split = model.split_rows(frame, spec, TRAINING, feedback=marks)
    for part in ("fit", "stop", "holdout"):
        _same(getattr(plain, part), getattr(split, part))
    assert split.clean_holdout is not None
    clean_keys = set(rowkeys.keys(rowkeys.keyed(market_batch, spec), spec))
    expected = split.holdout[split.holdout.index.isin(list(clean_keys))]
    _same(split.clean_holdout.sort_index(), expected.sort_index())
    assert len(split.clean_holdout) > 400
    assert split.set_aside_rows == 0


def test_time_split_keeps_the_most_recent_clean_rows_out_of_fit_and_early_stopping(
    ames: tuple[pd.DataFrame, DatasetSpec],
) -> None:
    frame, spec = ames
    assert spec.event_time is not None
    marks = (frame["Yr Sold"] == 2009).to_numpy()  # the 2009 sales came back as feedback
    plain = model.split_rows(frame, spec, TRAINING)
    split = model.split_rows(frame, spec, TRAINING, feedback=marks)
    clean = split.clean_holdout
    assert clean is not None
    # The clean rows split alone by the same rule: their most recent share is the clean holdout.
    alone = model.split_rows(frame[~marks], spec, TRAINING)
    _same(clean, alone.holdout)
    held = set(clean.index)
    assert not held & set(split.fit.index)
    assert not held & set(split.stop.index)
    assert (~clean["Yr Sold"].isin([2009])).all()
    # Only those rows moved, out of fit and early stopping; the holdout is the same.
    _same(split.holdout, plain.holdout)
    moved = (set(plain.fit.index) | set(plain.stop.index)) - (
        set(split.fit.index) | set(split.stop.index)
    )
    assert moved == held - set(plain.holdout.index)
    # Every row is counted once: fit, early stopping, holdout, or set aside.
    assert split.set_aside_rows == len(moved) > 0
    assert len(split.fit) + len(split.stop) + len(split.holdout) + split.set_aside_rows == len(
        frame
    )
    sold = spec.event_time.parse(clean)
    assert sold.min() >= spec.event_time.parse(split.fit[~split.fit["Yr Sold"].eq(2009)]).max()


def test_a_model_trained_on_feedback_carries_its_clean_holdout_scores(
    market_batch: pd.DataFrame, spec: DatasetSpec
) -> None:
    feedback = market.generate_batch(rows=400, seed=9)
    frame = pd.concat([rowkeys.keyed(market_batch, spec), rowkeys.keyed(feedback, spec)])
    marks = np.repeat([False, True], [len(market_batch), len(feedback)])
    training = TrainingSettings(n_estimators=20)
    trained = model.train(frame, spec, training, feedback=marks)
    assert trained.clean_holdout is not None
    assert trained.clean_metrics == model.score(trained.pipeline, trained.clean_holdout, spec)
    assert model.train(frame, spec, training).clean_metrics is None


def test_gate_refuses_a_challenger_worse_on_the_rows_that_predate_the_feedback() -> None:
    metrics = {"mae": 30_000.0, "rmse": 40_000.0, "r2": 0.8, "mape": 0.1}
    champion = {"mae": 31_000.0, "rmse": 41_000.0, "r2": 0.8, "mape": 0.1}
    bars = Thresholds()
    worse = model.CleanScores(
        rows=806,
        challenger={"mae": 33_000.0, "rmse": 41_500.0},
        champion={"mae": 31_000.0, "rmse": 41_000.0},
    )
    [reason] = model.gate_failures(
        metrics, TRAINING, bars=bars, champion=champion, champion_name="champion v3", clean=worse
    )
    assert reason.startswith("on the 806 rows that predate the feedback, MAE 33,000")
    assert "champion v3's 31,000" in reason
    assert f"tolerance {TRAINING.champion_tolerance:.0%}" in reason
    within = model.CleanScores(
        rows=806,
        challenger={"mae": 31_500.0, "rmse": 41_500.0},
        champion={"mae": 31_000.0, "rmse": 41_000.0},
    )
    assert model.gate_failures(metrics, TRAINING, bars=bars, champion=champion, clean=within) == []


def test_the_summary_and_mlflow_names_show_the_clean_holdout() -> None:
    clean = model.CleanScores(
        rows=806,
        challenger={"mae": 3.0, "rmse": 4.0, "r2": 0.8, "mape": 0.1},
        champion={"mae": 2.0, "rmse": 3.0, "r2": 0.9, "mape": 0.1},
    )
    metrics = {"mae": 1.0, "rmse": 2.0, "r2": 0.9, "mape": 0.1}
    summarize = partial(
        evaluation.summary_markdown,
        model_name="housing",
        version="4",
        run_id="abc",
        metrics=metrics,
        holdout_rows=1000,
        lineage={},
        champion=("3", metrics),
    )
    refused = ["on the 806 rows that predate the feedback, ..."]
    summary = summarize(gate_failures=refused, clean=clean)
    assert "the 806 rows that predate the folded feedback" in summary
    assert "| MAE | 3.000 | 2.000 |" in summary
    assert "predate" not in summarize(gate_failures=[])


def test_the_training_frame_marks_the_rows_of_feedback_tables(spec: DatasetSpec) -> None:
    assert datagate.is_feedback_table("data/feedback-window_2026-11-30.parquet")
    assert not datagate.is_feedback_table("data/feedback/batch.parquet")  # a folder, not a table
    assert not datagate.is_feedback_table("data/batch-feedback-1.parquet")
    batch, reported = market.generate_batch(rows=30, seed=1), market.generate_batch(rows=20, seed=2)
    gate = datagate.DataGate(
        spec, lambda _: pytest.fail("no validation"), prefix="data/", state_dir=None
    )
    data = gate.training_frame(
        {
            "data/2026/batch.parquet": StoredTable(checksum="a", frame=batch),
            "data/feedback-w1.parquet": StoredTable(checksum="b", frame=reported),
        },
        lambda _: spec,
    )
    assert data.feedback.tolist() == [False] * 30 + [True] * 20
    assert len(data.frame) == 50
