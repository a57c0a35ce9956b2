"""The served model as a small object, and the watcher that swaps in a new champion.

Swapping is a single attribute assignment: a request in flight keeps the predictor it started with,
the next one gets the new one, and nothing is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import pandas as pd

from lakeloop import tracking
from lakeloop.settings import Settings

logger = logging.getLogger(__name__)


class Model(Protocol):
    def predict(self, frame: pd.DataFrame) -> Any: ...


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

    def predict(self, records: list[dict[str, Any]]) -> list[float]:
        return [float(value) for value in self.model.predict(pd.DataFrame.from_records(records))]


class ModelSlot:
    """Holds the current predictor; ``None`` until the first champion is loaded."""

    def __init__(self, predictor: Predictor | None = None) -> None:
        self.current = predictor
        self.last_error = ""


def load_champion(settings: Settings, *, known_version: str | None) -> Predictor | None:
    """Load the registry's champion if it is not ``known_version``; ``None`` when unchanged or
    when there is no champion yet."""
    import mlflow.sklearn  # noqa: PLC0415 - heavy import, kept off the API's import path

    client = tracking.connect(settings)
    version = tracking.champion(client, settings)
    if version is None or version.version == known_version:
        return None
    if not version.run_id:
        raise LookupError(f"{settings.mlflow.model_name} version {version.version} has no run")
    run = client.get_run(version.run_id)
    model = mlflow.sklearn.load_model(f"models:/{settings.mlflow.model_name}/{version.version}")
    logger.info("loaded %s version %s", settings.mlflow.model_name, version.version)
    return Predictor(
        model=model,
        name=settings.mlflow.model_name,
        version=str(version.version),
        run_id=version.run_id,
        lakefs_repository=run.data.tags.get(tracking.TAG_REPOSITORY, ""),
        lakefs_commit_id=run.data.tags.get(tracking.TAG_COMMIT, ""),
        metrics=dict(run.data.metrics),
    )


async def follow_champion(settings: Settings, slot: ModelSlot) -> None:
    """Poll the registry forever and swap the slot's predictor when the champion moves."""
    while True:
        known = slot.current.version if slot.current else None
        try:
            loaded = await anyio.to_thread.run_sync(
                functools.partial(load_champion, settings, known_version=known)
            )
        except Exception as error:
            slot.last_error = f"{type(error).__name__}: {error}"
            logger.warning("cannot check the champion: %s", slot.last_error)
        else:
            slot.last_error = ""
            if loaded is not None:
                slot.current = loaded  # the atomic swap
        await asyncio.sleep(settings.api.champion_poll_seconds)
