"""The served model as a small object, and the watcher that swaps in a new champion.

Hot path: decoded records become a float32 matrix in the booster's feature order, categories
turned into the codes the booster was trained with (read from the pipeline's ``FeatureEncoder``;
unknown → NaN, which XGBoost routes like a missing value, exactly as the pipeline does), then
``Booster.inplace_predict``. No pandas on the way: a DataFrame per request costs more than the
trees. Nor a Python loop per row: records are read into columns by C-level ``map`` calls, a
category column is mapped with its code table's ``dict.get``, and numpy converts each column in one
call (``None`` — a null or an unknown category — becomes NaN in that conversion).

Swapping is a single attribute assignment of a predictor that was loaded and warmed (one
prediction) in a worker thread: a request in flight keeps the predictor it started with, the next
one gets the new one, and nothing is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from operator import attrgetter
from typing import Any, Protocol

import anyio
import numpy as np
import pandas as pd

from lakeloop import tracking
from lakeloop.settings import Settings

logger = logging.getLogger(__name__)


class Model(Protocol):
    def predict(self, frame: pd.DataFrame) -> Any: ...


class BoosterKernel:
    """A fitted ``FeatureEncoder`` + ``XGBRegressor`` pipeline reduced to what a prediction needs:
    the booster, its feature order, one category→code table per categorical feature, and the
    boosting rounds early stopping kept."""

    def __init__(self, pipeline: Any) -> None:
        encoder = pipeline.named_steps["encode"]
        regressor = pipeline.named_steps["regress"]
        self.booster = regressor.get_booster()
        self.names: tuple[str, ...] = tuple(self.booster.feature_names or ())
        tables = {
            name: {c: float(i) for i, c in enumerate(known)} for name, known in encoder.categories
        }
        self.codes: tuple[dict[str, float] | None, ...] = tuple(tables.get(n) for n in self.names)
        self.iteration_range = (0, _rounds_kept(regressor))

    @classmethod
    def of(cls, model: Any) -> BoosterKernel | None:
        """The kernel of a lakeloop pipeline; ``None`` for any other model (served via pandas)."""
        steps = getattr(model, "named_steps", {})
        if "encode" not in steps or "regress" not in steps:
            return None
        if not hasattr(steps["encode"], "categories") or not hasattr(
            steps["regress"], "get_booster"
        ):
            return None
        kernel = cls(model)
        # Without feature names there is no way to put request fields in the booster's order.
        return kernel if kernel.names else None

    def matrix_from_columns(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Rows by booster features, float32, from one sequence of values per feature name."""
        rows = len(columns[self.names[0]])
        matrix = np.empty((rows, len(self.names)), dtype=np.float32)
        for index, (name, codes) in enumerate(zip(self.names, self.codes, strict=True)):
            values = columns[name]
            # An unknown category (and a null) maps to None, which numpy turns into NaN.
            matrix[:, index] = values if codes is None else list(map(codes.get, values))
        return matrix

    def matrix_from_records(self, records: Sequence[Any]) -> np.ndarray:
        """The same from objects with one attribute per feature (decoded msgspec structs)."""
        if len(records) == 1:
            row = [
                self._cell(records[0], name, codes)
                for name, codes in zip(self.names, self.codes, strict=True)
            ]
            return np.array([row], dtype=np.float32)
        # C-level `map(attrgetter)` per feature: no Python loop per row, and no tuple per row
        # for the garbage collector to visit.
        columns = {name: list(map(attrgetter(name), records)) for name in self.names}
        return self.matrix_from_columns(columns)

    @staticmethod
    def _cell(record: Any, name: str, codes: dict[str, float] | None) -> Any:
        value = getattr(record, name)
        return value if codes is None else codes.get(value, math.nan)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Predictions for each row of an encoded matrix."""
        return np.asarray(
            self.booster.inplace_predict(matrix, iteration_range=self.iteration_range),
            dtype=np.float64,
        )


def _rounds_kept(regressor: Any) -> int:
    """Rounds the sklearn wrapper predicts with (to the best iteration if early stopping ran)."""
    try:
        return int(regressor.best_iteration) + 1
    except AttributeError:
        return int(regressor.get_booster().num_boosted_rounds())


@dataclass(frozen=True)
class Predictor:
    """A loaded model version with its lineage."""

    model: Model
    name: str
    version: str
    run_id: str = ""
    lakefs_repository: str = ""
    lakefs_commit_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @cached_property
    def kernel(self) -> BoosterKernel | None:
        return BoosterKernel.of(self.model)

    def predict_records(self, records: Sequence[Any]) -> np.ndarray:
        """Predictions for decoded records (objects with one attribute per feature)."""
        if self.kernel is not None:
            return self.kernel.predict(self.kernel.matrix_from_records(records))
        frame = pd.DataFrame.from_records([_as_dict(record) for record in records])
        return np.asarray(self.model.predict(frame), dtype=np.float64)

    def predict_columns(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Predictions for a columnar batch (one sequence per feature)."""
        if self.kernel is not None:
            return self.kernel.predict(self.kernel.matrix_from_columns(columns))
        return np.asarray(self.model.predict(pd.DataFrame(dict(columns))), dtype=np.float64)

    def predict(self, records: list[dict[str, Any]]) -> list[float]:
        """Predictions for plain dict records (through the pipeline; not the hot path)."""
        return [float(value) for value in self.model.predict(pd.DataFrame.from_records(records))]

    def warm(self, example: Any) -> Predictor:
        """Build the kernel and run one prediction, so the first request pays nothing extra."""
        self.predict_records([example])
        return self


def _as_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, dict):
        return record
    return {name: getattr(record, name) for name in record.__struct_fields__}


class ModelSlot:
    """Holds the current predictor; ``None`` until the first champion is loaded."""

    def __init__(self, predictor: Predictor | None = None) -> None:
        self.current = predictor
        self.last_error = ""
        """The last registry check's failure; empty when it succeeded."""
        self.last_check: str | None = None
        self.swaps = 0
        self.on_swap: Callable[[Predictor], None] = lambda _: None
        self._lock: asyncio.Lock | None = None

    def swap(self, predictor: Predictor) -> None:
        """Serve ``predictor`` from the next request on."""
        self.current = predictor  # the atomic swap
        self.swaps += 1
        self.on_swap(predictor)

    @property
    def lock(self) -> asyncio.Lock:
        # Created on first use, inside the running loop; serialises polling and forced reloads.
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock


def load_champion(
    settings: Settings, *, known_version: str | None, example: Any = None
) -> Predictor | None:
    """Load (and warm with ``example``) the registry's champion if it is not ``known_version``;
    ``None`` when unchanged or when there is no champion yet."""
    import mlflow.sklearn  # noqa: PLC0415 - heavy import, kept off the API's import path

    client = tracking.connect(settings)
    version = tracking.champion(client, settings)
    if version is None or version.version == known_version:
        return None
    if not version.run_id:
        raise LookupError(f"{settings.mlflow.model_name} version {version.version} has no run")
    run = client.get_run(version.run_id)
    model = mlflow.sklearn.load_model(f"models:/{settings.mlflow.model_name}/{version.version}")
    predictor = Predictor(
        model=model,
        name=settings.mlflow.model_name,
        version=str(version.version),
        run_id=version.run_id,
        lakefs_repository=run.data.tags.get(tracking.TAG_REPOSITORY, ""),
        lakefs_commit_id=run.data.tags.get(tracking.TAG_COMMIT, ""),
        metrics=dict(run.data.metrics),
    )
    if example is not None:
        predictor.warm(example)
    logger.info("loaded %s version %s", settings.mlflow.model_name, version.version)
    return predictor


async def refresh(settings: Settings, slot: ModelSlot, *, example: Any = None) -> bool:
    """Check the registry once; load, warm and swap in a new champion. True when it changed.
    Raises when the registry cannot be reached (the loaded model keeps serving)."""
    async with slot.lock:
        known = slot.current.version if slot.current else None
        try:
            loaded = await anyio.to_thread.run_sync(
                functools.partial(load_champion, settings, known_version=known, example=example)
            )
        except Exception as error:
            slot.last_error = f"{type(error).__name__}: {error}"
            raise
        finally:
            slot.last_check = datetime.now(UTC).isoformat()
        slot.last_error = ""
        if loaded is None:
            return False
        slot.swap(loaded)
        return True


async def follow_champion(settings: Settings, slot: ModelSlot, *, example: Any = None) -> None:
    """Poll the registry forever and swap the slot's predictor when the champion moves."""
    while True:
        try:
            await refresh(settings, slot, example=example)
        except Exception:
            logger.warning("cannot check the champion: %s", slot.last_error)
        await asyncio.sleep(settings.api.champion_poll_seconds)
