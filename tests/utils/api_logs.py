"""The API's two logs (predictions and reported prices) in a state folder, written by the API's own
writer (:class:`~lakeloop.stores.prediction_log.SegmentWriter`), for what reads them: the monitor's
window, a retrain's feedback."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from lakeloop.dataset import DatasetSpec
from lakeloop.stores.objects import ObjectStore
from lakeloop.stores.prediction_log import (
    FEEDBACK,
    PREDICTIONS,
    Entry,
    FeedbackEntry,
    SegmentWriter,
    feedback_table,
    prediction_table,
)


class Logs:
    """The API's two logs in a state folder, written the way the API writes them."""

    def __init__(self, state: Path, spec: DatasetSpec) -> None:
        self.state = ObjectStore.folder(state)
        self.spec = spec
        self.predictions = SegmentWriter(
            self.state.child(PREDICTIONS),
            prediction_table(spec),
            max_rows=100_000,
            flush_rows=100_000,
            flush_seconds=60,
        )
        self.feedback = SegmentWriter(
            self.state.child(FEEDBACK),
            feedback_table,
            max_rows=100_000,
            flush_rows=100_000,
            flush_seconds=60,
        )

    def predict(
        self,
        sales: pd.DataFrame,
        *,
        version: str,
        at: datetime,
        predictions: np.ndarray | None = None,
    ) -> list[str]:
        """Log the champion ``version``'s predictions for ``sales`` at ``at`` (200,000 each
        unless given) and return their ids."""
        ids = [f"{version}-{at:%H%M%S}-{i}" for i in range(len(sales))]
        self.predictions.put(
            Entry(
                at=at,
                model_name="housing-price",
                model_version=version,
                prediction_ids=ids,
                predictions=(
                    np.full(len(sales), 200_000.0) if predictions is None else predictions
                ),
                columns={name: sales[name].tolist() for name in self.spec.feature_names},
            )
        )
        self.predictions.flush()
        return ids

    def report(
        self, ids: list[str], prices: list[float], *, at: datetime, client: str | None = None
    ) -> None:
        for prediction_id, price in zip(ids, prices, strict=True):
            self.feedback.put(
                FeedbackEntry(at=at, prediction_id=prediction_id, actual=price, client=client)
            )
        self.feedback.flush()
