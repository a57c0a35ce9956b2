"""The reference a window is compared with: the champion's own training data, read from lakeFS at
the commit the champion was trained on, with the champion's predictions on it.

Reading and scoring it costs seconds, and a version's training data never changes (it is a commit),
so it is built once per champion version and kept beside the monitor's history (in the monitoring
store, so every monitor pod finds it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lakeloop.dataset import DatasetSpec
from lakeloop.stores.objects import ObjectStore

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
    store: ObjectStore, *, model_version: str, build: Callable[[], pd.DataFrame]
) -> pd.DataFrame:
    """The reference of ``model_version`` kept in ``store``, built and stored on first use (an
    atomic write: never a half-written reference for the next run to trust)."""
    key = f"{REFERENCE_DIR}/v{model_version}.parquet"
    if store.exists(key):
        return pd.read_parquet(io.BytesIO(store.get(key)))
    frame = build()
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    store.put(key, buffer.getvalue())
    return frame
