"""The served model as a small object, and the watcher that swaps in a new champion.

Hot path: decoded records become a float32 matrix in the model's feature order, categories
turned into the codes the model was trained with (read from the pipeline's ``FeatureEncoder``;
unknown → NaN, which XGBoost routes like a missing value, exactly as the pipeline does), then the
model kind's matrix predictor (:func:`lakeloop.model.fast_path`; XGBoost's is
``Booster.inplace_predict``). No pandas on the way: a DataFrame per request costs more than the
trees. Nor a Python loop per row: records are read into columns by C-level ``map`` calls, a
category column is mapped with its code table's ``dict.get``, and numpy converts each column in one
call (``None`` — a null or an unknown category — becomes NaN in that conversion).

Swapping is a single attribute assignment of a predictor that was loaded and warmed (one
prediction) in a worker thread: a request in flight keeps the predictor it started with, the next
one gets the new one, and nothing is dropped. The predictor carries the dataset description it was
trained under, so the request schema (``api.service.RequestSchema``) swaps with it.

A champion that cannot be loaded (a corrupt or missing artifact, a model that will not predict)
is never swapped in: the last good version keeps serving, the slot remembers the failed version
and its error (``/readyz`` shows them, a metric counts the attempts), and polling retries that
version only after a growing pause (a forced reload retries at once). When the alias moves to
another version, that one is loaded as usual.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from operator import attrgetter
from typing import Any, Protocol

import anyio
import msgspec
import numpy as np
import pandas as pd

from lakeloop import registry
from lakeloop.dataset import DatasetSpec, attribute, is_integer_code
from lakeloop.model import FeatureEncoder, fast_path
from lakeloop.settings import Settings
from lakeloop.trainer import MatrixModel

logger = logging.getLogger(__name__)


class Model(Protocol):
    def predict(self, frame: pd.DataFrame) -> Any: ...


class MatrixKernel:
    """A fitted lakeloop pipeline reduced to what a prediction needs: the model kind's matrix
    predictor, its feature order, and one category→code table per categorical feature."""

    def __init__(self, encoder: FeatureEncoder, matrix_model: MatrixModel) -> None:
        self.matrix_model = matrix_model
        self.names: tuple[str, ...] = matrix_model.feature_names
        self.attributes = tuple(map(attribute, self.names))
        """The names as attributes of decoded records (``Gr Liv Area`` → ``Gr_Liv_Area``)."""
        tables = {name: _code_table(known) for name, known in encoder.categories}
        self.codes: tuple[dict[str, float] | None, ...] = tuple(tables.get(n) for n in self.names)

    @classmethod
    def of(cls, model: Any) -> MatrixKernel | None:
        """The kernel of a lakeloop pipeline; ``None`` for any other model (served via pandas)."""
        found = fast_path(model)
        if found is None:
            return None
        kernel = cls(*found)
        # Without feature names there is no way to put request fields in the model's order.
        return kernel if kernel.names else None

    def matrix_from_columns(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Rows by the model's features, float32, from one sequence of values per feature name."""
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
                for name, codes in zip(self.attributes, self.codes, strict=True)
            ]
            return np.array([row], dtype=np.float32)
        # C-level `map(attrgetter)` per feature: no Python loop per row, and no tuple per row
        # for the garbage collector to visit.
        columns = {
            name: list(map(attrgetter(attr), records))
            for name, attr in zip(self.names, self.attributes, strict=True)
        }
        return self.matrix_from_columns(columns)

    @staticmethod
    def _cell(record: Any, name: str, codes: dict[str, float] | None) -> Any:
        value = getattr(record, name)
        return value if codes is None else codes.get(value, math.nan)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Predictions for each row of an encoded matrix."""
        return self.matrix_model.predict(matrix)


def _code_table(known: Sequence[str]) -> dict[Any, float]:
    """Category → the code the model was trained with; an integer code answers to its JSON
    integer as well as to its digits (``60`` and ``"60"``), as the encoder reads both."""
    table: dict[Any, float] = {category: float(index) for index, category in enumerate(known)}
    for category, index in list(table.items()):
        if is_integer_code(category):
            table[int(category)] = index
    return table


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
    dataset: str = ""
    """The dataset description it was trained under (``name@vN``; empty if not recorded)."""
    dataset_digest: str = ""
    spec: DatasetSpec | None = None
    """That description itself, recorded with the model: its request schema. ``None`` for a
    model that recorded none (the API then uses the configured description)."""

    @cached_property
    def kernel(self) -> MatrixKernel | None:
        return MatrixKernel.of(self.model)

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
    # Keyed by the names as JSON writes them (the model's columns), not the attributes.
    return dict(zip(record.__struct_encode_fields__, msgspec.structs.astuple(record), strict=True))


class ModelLoadError(Exception):
    """The registry named a champion version that could not be loaded (or would not predict)."""

    def __init__(self, version: str, reason: str, *, retried: bool = True) -> None:
        super().__init__(f"version {version}: {reason}")
        self.version = version
        self.reason = reason
        self.retried = retried
        """False when the version was skipped (it failed before and its pause is not over)."""


# Pauses before polling retries a version that failed to load: doubling, within these bounds.
_RETRY_FIRST_SECONDS = 5.0
_RETRY_MAX_SECONDS = 300.0


class ModelSlot:
    """Holds the current predictor; ``None`` until the first champion is loaded."""

    def __init__(self, predictor: Predictor | None = None) -> None:
        self.current = predictor
        self.last_error = ""
        """The last registry check's failure; empty when it succeeded."""
        self.last_check: str | None = None
        self.swaps = 0
        self.failed_version: str | None = None
        """The champion version that could not be loaded; ``None`` once the champion loads."""
        self.load_error = ""
        """Why ``failed_version`` could not be loaded."""
        self.load_failures = 0
        self.retry_at = 0.0
        """Monotonic time before which polling does not try ``failed_version`` again."""
        self.retry_pause = 0.0
        self.blocked: registry.Blocked | None = None
        """Training is blocked (the data on the production branch fails the checks), as the
        registry said at the last check: the served champion is stale."""
        self.refused: registry.Refused | None = None
        """While nothing is served: the newest version, which the gate refused (why no model)."""
        self.on_swap: Callable[[Predictor], None] = lambda _: None
        self.on_load_failure: Callable[[str], None] = lambda _: None
        self._lock: asyncio.Lock | None = None

    def swap(self, predictor: Predictor) -> None:
        """Serve ``predictor`` from the next request on."""
        self.current = predictor  # the atomic swap
        self.swaps += 1
        self.on_swap(predictor)

    def load_failed(self, error: ModelLoadError) -> None:
        """Remember a champion that could not be loaded and when to try it again."""
        again = self.failed_version == error.version
        self.failed_version = error.version
        self.load_error = error.reason
        self.load_failures += 1
        pause = min(_RETRY_MAX_SECONDS, self.retry_pause * 2) if again else _RETRY_FIRST_SECONDS
        self.retry_pause = pause
        self.retry_at = time.monotonic() + pause
        self.on_load_failure(error.version)

    def load_succeeded(self) -> None:
        """The champion is the served version: no failed load to report."""
        self.failed_version = None
        self.load_error = ""
        self.retry_pause = 0.0
        self.retry_at = 0.0

    def skipped_version(self, *, force: bool) -> str | None:
        """The failed version a poll should not load again yet (``None``: try whatever)."""
        if force or self.failed_version is None or time.monotonic() >= self.retry_at:
            return None
        return self.failed_version

    @property
    def lock(self) -> asyncio.Lock:
        # Created on first use, inside the running loop; serialises polling and forced reloads.
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock


# A valid record for a loaded predictor (under its own request schema), to warm it with.
Example = Callable[[Predictor], Any]


def load_champion(
    settings: Settings,
    *,
    known_version: str | None,
    example: Example | None = None,
    skip_version: str | None = None,
) -> Predictor | None:
    """Load the registry's champion with the description it was trained under (and warm it with
    ``example``'s record for it) if it is not ``known_version``; ``None`` when unchanged or when
    there is no champion yet. Raises :class:`ModelLoadError` when the champion's model cannot be
    loaded or does not predict (without trying when it is ``skip_version``), anything else when
    the registry cannot be reached."""

    client = registry.connect(settings)
    version = registry.champion(client, settings)
    if version is None or version.version == known_version:
        return None
    number = str(version.version)
    if number == skip_version:
        raise ModelLoadError(number, "failed before; not retried yet", retried=False)
    record = registry.record_of(client, version)
    try:
        model = registry.load_version(settings, version=number)
        predictor = Predictor(
            model=model,
            name=settings.mlflow.model_name,
            version=number,
            run_id=record.run_id,
            lakefs_repository=record.repository,
            lakefs_commit_id=record.commit_id,
            metrics=record.metrics,
            dataset=record.tags.get(registry.TAG_DATASET, ""),
            dataset_digest=record.tags.get(registry.TAG_DATASET_DIGEST, ""),
            spec=registry.description_of(version),
        )
        if example is not None:
            predictor.warm(example(predictor))
    except Exception as error:
        # The registry answered: the artifact is what failed (corrupt, missing, or a model that
        # does not take our records). Named apart from an outage so /readyz can say which.
        raise ModelLoadError(number, f"{type(error).__name__}: {error}") from error
    logger.info("loaded %s version %s", settings.mlflow.model_name, number)
    return predictor


def training_blocked(settings: Settings) -> registry.Blocked | None:
    """Whether the registry says training is blocked."""
    return registry.training_blocked(registry.connect(settings), settings)


def newest_refusal(settings: Settings) -> registry.Refused | None:
    """The newest version when the gate refused it."""
    return registry.newest_refusal(registry.connect(settings), settings)


async def refresh(
    settings: Settings, slot: ModelSlot, *, example: Example | None = None, force: bool = False
) -> bool:
    """Check the registry once; load, warm and swap in a new champion. True when it changed.
    Raises when the registry cannot be reached or the champion cannot be loaded (the loaded
    model keeps serving either way). ``force`` retries a failed version without waiting."""
    async with slot.lock:
        known = slot.current.version if slot.current else None
        load = functools.partial(
            load_champion,
            settings,
            known_version=known,
            example=example,
            skip_version=slot.skipped_version(force=force),
        )
        try:
            slot.blocked = await anyio.to_thread.run_sync(training_blocked, settings)
            loaded = await anyio.to_thread.run_sync(load)
        except ModelLoadError as error:
            slot.last_error = ""  # the registry answered
            if error.retried:
                slot.load_failed(error)
                logger.error("cannot load the champion, %s; still serving %s", error, known)
            raise
        except Exception as error:
            slot.last_error = f"{type(error).__name__}: {error}"
            raise
        finally:
            slot.last_check = datetime.now(UTC).isoformat()
        slot.last_error = ""
        slot.load_succeeded()
        if loaded is None and slot.current is None:
            slot.refused = await anyio.to_thread.run_sync(newest_refusal, settings)
        if loaded is None:
            return False
        slot.refused = None
        slot.swap(loaded)
        return True


async def follow_champion(
    settings: Settings, slot: ModelSlot, *, example: Example | None = None
) -> None:
    """Poll the registry forever and swap the slot's predictor when the champion moves."""
    while True:
        try:
            await refresh(settings, slot, example=example)
        except ModelLoadError:
            pass  # logged once per attempt by refresh; /readyz and the metrics show it
        except Exception:
            logger.warning("cannot check the champion: %s", slot.last_error)
        await asyncio.sleep(settings.api.champion_poll_seconds)
