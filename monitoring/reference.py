"""The reference a window is compared with: the champion's own training data, read from lakeFS at
the commit the champion was trained on, with the champion's predictions on it.

Reading and scoring it costs seconds, and a version's training data never changes (it is a commit),
so it is built once per champion version and kept beside the monitor's history.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lakeloop.dataset import DatasetSpec

REFERENCE_DIR = "reference"


def reference_frame(
    training: pd.DataFrame,
    model: Any,
    spec: DatasetSpec,
    *,
    rows: int,
    seed: int,
    prediction_column: str = "prediction",
) -> pd.DataFrame:
    """At most ``rows`` of ``training``'s labelled rows (a seeded sample, so every run of a
    version compares with the same rows) with ``model``'s prediction for each."""
    training = training.dropna(subset=[spec.target.name])
    sample = training if len(training) <= rows else training.sample(n=rows, random_state=seed)
    sample = sample.reset_index(drop=True)
    predicted = np.asarray(model.predict(sample[spec.feature_names]), dtype="float64")
    return sample.assign(**{prediction_column: predicted})


def cached_reference(
    folder: Path, *, model_version: str, build: Callable[[], pd.DataFrame]
) -> pd.DataFrame:
    """The reference of ``model_version`` stored under ``folder``, built and stored on first use."""
    path = folder / REFERENCE_DIR / f"v{model_version}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    frame = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    frame.to_parquet(partial, index=False)
    partial.replace(path)  # never leave a half-written reference for the next run to trust
    return frame
