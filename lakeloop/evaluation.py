"""How a trained model is described: metrics per segment and the pictures a reviewer looks at.

Segments come from the dataset description (every categorical feature, and price bands of the
target), so nothing here names a column.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lakeloop.dataset import DatasetSpec
from lakeloop.model import CleanScores, ClusterHoldout, TrainedModel, regression_metrics

PRICE_BANDS = 4  # quartiles of the holdout's target
MIN_SEGMENT_ROWS = 20  # fewer rows make a metric that is mostly noise
CLEAN_HOLDOUT = "clean_holdout"
"""Prefix of the metrics on the rows that predate folded feedback (``clean_holdout_mae``; the
champion's, logged on the challenger's run: ``champion_clean_holdout_mae``)."""


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric name (letters, digits, ``_ - . /`` and spaces only)."""
    return ".".join(re.sub(r"[^A-Za-z0-9_\-. /]", "_", part) for part in parts)


def clean_holdout_metrics(trained: TrainedModel) -> dict[str, float]:
    """The model's metrics on the rows that predate folded feedback, named for MLflow (empty when
    it learned from no feedback)."""
    return {
        f"{CLEAN_HOLDOUT}_{name}": value for name, value in (trained.clean_metrics or {}).items()
    }


def segment_metrics(trained: TrainedModel, spec: DatasetSpec) -> dict[str, float]:
    """MAE and RMSE per category of each categorical feature and per target band (taken where
    the holdout is: on a Dask cluster's worker when it keeps it)."""
    if isinstance(trained.holdout, ClusterHoldout):
        return trained.holdout.segment_metrics
    holdout = trained.holdout.reset_index(drop=True)
    actual = holdout[spec.target.name].to_numpy()
    segments: dict[str, pd.Series] = {
        name: holdout[name].astype("string").fillna("missing") for name in spec.categorical_features
    }
    bands = pd.qcut(holdout[spec.target.name], PRICE_BANDS, labels=False, duplicates="drop")
    segments["target_band"] = ("q" + (bands + 1).astype("string")).fillna("missing")
    metrics = {}
    for feature, labels in segments.items():
        for label in sorted(labels.unique()):
            rows = (labels == label).to_numpy()
            if rows.sum() < MIN_SEGMENT_ROWS:
                continue
            scores = regression_metrics(actual[rows], trained.predicted[rows])
            for name in ("mae", "rmse"):
                metrics[metric_key(name, feature, str(label))] = scores[name]
    return metrics


def figures(trained: TrainedModel, spec: DatasetSpec) -> dict[str, Figure]:
    """Predicted versus actual, residuals, and feature importance, keyed by file name (from a
    sample of the holdout when a Dask cluster keeps it)."""
    if isinstance(trained.holdout, ClusterHoldout):
        sample = trained.holdout.sample
        actual, predicted = sample[spec.target.name].to_numpy(), sample["predicted"].to_numpy()
    else:
        actual, predicted = trained.holdout[spec.target.name].to_numpy(), trained.predicted
    return {
        "predicted_vs_actual.png": _predicted_vs_actual(actual, predicted, spec),
        "residuals.png": _residuals(actual, predicted, spec),
        "feature_importance.png": _importance(trained, spec),
    }


def _predicted_vs_actual(actual: np.ndarray, predicted: np.ndarray, spec: DatasetSpec) -> Figure:
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    axes.scatter(actual, predicted, s=4, alpha=0.4)
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    axes.plot([low, high], [low, high], color="black", linewidth=1)
    axes.set(xlabel=f"actual {spec.target.name}", ylabel="predicted", title="Holdout")
    figure.tight_layout()
    return figure


def _residuals(actual: np.ndarray, predicted: np.ndarray, spec: DatasetSpec) -> Figure:
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.scatter(predicted, actual - predicted, s=4, alpha=0.4)
    axes.axhline(0, color="black", linewidth=1)
    axes.set(xlabel=f"predicted {spec.target.name}", ylabel="actual - predicted", title="Residuals")
    figure.tight_layout()
    return figure


def _importance(trained: TrainedModel, spec: DatasetSpec) -> Figure:
    importances = trained.facts.importances
    ordered = sorted(spec.feature_names, key=lambda name: importances.get(name, 0.0))
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.barh(ordered, [importances.get(name, 0.0) for name in ordered])
    axes.set(xlabel=trained.facts.importance_measure, title="Feature importance")
    figure.tight_layout()
    return figure


def summary_markdown(
    *,
    model_name: str,
    version: str,
    run_id: str,
    metrics: dict[str, float],
    holdout_rows: int,
    lineage: dict[str, str],
    champion: tuple[str, dict[str, float]] | None,
    gate_failures: list[str],
    trials: int = 0,
    champion_note: str = "",
    hyperparameters_from: str = "settings",
    clean: CleanScores | None = None,
) -> str:
    """The training run in a few lines of Markdown (a Prefect artifact): decision, metrics next to
    the champion's on the same holdout (and on the rows that predate folded feedback, when it
    learned from some: ``clean``), how the hyperparameters were chosen, lineage."""
    decision = (
        "**promoted to champion**"
        if not gate_failures
        else "**not promoted**: " + "; ".join(gate_failures)
    )
    lines = [
        f"{model_name} v{version} {decision}",
        "",
        "| metric | this model | " + (f"champion v{champion[0]} |" if champion else "champion |"),
        "|---|---:|---:|",
    ]
    for name in ("mae", "rmse", "r2", "mape"):
        theirs = f"{champion[1][name]:,.3f}" if champion else "-"
        lines.append(f"| {name.upper()} | {metrics[name]:,.3f} | {theirs} |")
    if clean is not None:
        lines += [
            "",
            f"On the clean holdout, the {clean.rows} rows that predate the folded feedback:",
            "",
            "| metric | this model | champion |",
            "|---|---:|---:|",
            *(
                f"| {name.upper()} | {clean.challenger[name]:,.3f} | {clean.champion[name]:,.3f} |"
                for name in ("mae", "rmse", "r2", "mape")
            ),
        ]
    if champion_note:
        lines += ["", f"Note: champion {champion_note}."]
    lines += [
        "",
        f"Holdout: {holdout_rows} rows. MLflow run `{run_id}`.",
        (
            f"Hyperparameters: the best of {trials} trials on the early-stopping slice "
            "(nested runs of that run)."
            if trials
            else f"Hyperparameters: tuned, handed on by {hyperparameters_from}."
            if hyperparameters_from.startswith("champion")
            else "Hyperparameters: as configured (not tuned)."
        ),
        "",
        *(f"- {key}: `{value}`" for key, value in sorted(lineage.items())),
    ]
    return "\n".join(lines)
