"""The training pipeline as tests drive it on their own data (no lakeFS), and the lineage it
records; a runtime that pauses at the pipeline's step boundaries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import pandas as pd

from lakeloop import registry
from lakeloop.dataset import DatasetSpec
from lakeloop.settings import Settings, load_settings
from pipelines import train
from pipelines.runtime import PLAIN, Runtime
from tests.utils.net import free_port
from tooling import market

P = ParamSpec("P")
R = TypeVar("R")

REGISTERED = "the version registered (pending), before the gate"
FINISHED = "the gate decided"
_BOUNDARIES = {train.log_and_register: REGISTERED, train.gate_and_promote: FINISHED}


def lineage(spec: DatasetSpec, commit_id: str, *, trigger: str = "manual") -> registry.Lineage:
    """Lineage of a test model trained on ``commit_id`` of the ``housing`` repository."""
    return registry.Lineage(
        repository="housing",
        commit_id=commit_id,
        validation="passed",
        trigger=trigger,
        dataset=f"{spec.name}@v{spec.version}",
    )


class Pausing(Runtime):
    """Steps called in process; after the registration and after the gate, ``pause`` is called
    with the boundary's name (a test decides there whether the process goes on)."""

    def __init__(self, pause: Callable[[str], None]) -> None:
        self.pause = pause

    def step(self, fn: Callable[P, R]) -> Callable[P, R]:
        boundary = _BOUNDARIES.get(fn)
        if boundary is None:
            return fn

        def then_pause(*args: P.args, **kwargs: P.kwargs) -> R:
            result = fn(*args, **kwargs)
            self.pause(boundary)
            return result

        return then_pause


def train_commit(
    settings: Settings,
    spec: DatasetSpec,
    frame: pd.DataFrame,
    *,
    commit: str,
    report: Path,
    pause: Callable[[str], None] | None = None,
) -> registry.LoggedModel | None:
    """Train ``frame`` as the validated data of ``commit`` through the training pipeline
    (:func:`pipelines.train.train_and_promote`, lock and deployment check included), calling
    ``pause`` at its step boundaries; ``None`` when the commit was already trained."""
    if train.already_trained(settings, commit):
        return None
    outcome = train.train_and_promote(
        settings,
        spec,
        frame,
        lineage=lineage(spec, commit, trigger="commit"),
        report=report,
        runtime=PLAIN if pause is None else Pausing(pause),
    )
    return outcome.logged


def registry_settings(root: Path) -> Settings:
    """Settings of a registry test under ``root``: its own MLflow port, thresholds the market's
    small models meet, and no API to serve the champion (so no deployment check)."""
    return load_settings(
        state_dir=root / "state",
        mlflow={"port": free_port()},
        training={"max_mae": 90_000, "max_rmse": 120_000},
        api={"verify_deploy": False},
    )


def train_first_champion(settings: Settings, spec: DatasetSpec, report: Path) -> None:
    """A weak first champion (15 trees, 2,000 rows of commit 0…0) for challengers to beat."""
    weak = settings.model_copy(
        update={"training": settings.training.model_copy(update={"n_estimators": 15})}
    )
    champion_data = market.generate_batch(rows=2000, seed=31)
    train_commit(weak, spec, champion_data, commit="0" * 64, report=report)
