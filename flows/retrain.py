"""Retrain flow: what a drift event starts. The sequence is :func:`pipelines.retrain.retrain`
(fold the window's reported prices into lakeFS, then a training subflow run on the newest
commit); the flow gives it Prefect."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow

from flows.runtime import PREFECT
from flows.train import train_on_commit
from lakeloop import loop
from lakeloop.dataset import load_spec
from lakeloop.events import DRIFT_DETECTED
from lakeloop.settings import load_settings


@flow(name=loop.RETRAIN_FLOW, flow_run_name="retrain-v{champion_version}", log_prints=True)
def retrain_on_drift(
    champion_version: str,
    window_id: str,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    reason: str = DRIFT_DETECTED,
) -> dict[str, Any]:
    """Add the window's reported prices to lakeFS, then train on the newest production commit."""
    from pipelines.retrain import DriftWindow, retrain  # noqa: PLC0415 - in the run: see flows/__init__.py

    settings = load_settings()
    window = DriftWindow(champion_version, window_id, window_start, window_end)
    spec = load_spec(settings.dataset)
    return retrain(settings, spec, window, reason=reason, train=train_on_commit, runtime=PREFECT)
