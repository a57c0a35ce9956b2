"""The training flow's steps as tests drive them without Prefect, and the lineage they record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from flows import train as train_flow
from lakeloop import tracking
from lakeloop.dataset import DatasetSpec
from lakeloop.settings import Settings

REGISTERED = "the version registered (pending), before the gate"
FINISHED = "the gate decided"


def lineage(spec: DatasetSpec, commit_id: str, *, trigger: str = "manual") -> tracking.Lineage:
    """Lineage of a test model trained on ``commit_id`` of the ``housing`` repository."""
    return tracking.Lineage(
        repository="housing",
        commit_id=commit_id,
        validation="passed",
        trigger=trigger,
        dataset=f"{spec.name}@v{spec.version}",
    )


def _no_pause(_point: str) -> None:
    return None


def train_commit(
    settings: Settings,
    spec: DatasetSpec,
    frame: pd.DataFrame,
    *,
    commit: str,
    report: Path,
    pause: Callable[[str], None] = _no_pause,
) -> tracking.LoggedModel | None:
    """The training flow's steps after validation, as ``train_on_commit`` sequences them, calling
    ``pause`` at each step boundary; ``None`` when the commit was already trained."""
    if train_flow.already_trained.fn(settings, commit):
        return None
    trained = train_flow.fit.fn(frame, spec, settings)
    logged = train_flow.log_and_register.fn(
        settings,
        trained,
        spec=spec,
        frame=frame,
        lineage=lineage(spec, commit, trigger="commit"),
        report=report,
    )
    pause(REGISTERED)
    champion = train_flow.score_champion.fn(settings, trained, spec)
    train_flow.gate_and_promote.fn(settings, trained, logged, champion, spec)
    pause(FINISHED)
    return logged
