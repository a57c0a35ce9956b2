"""Monitor flow: the champion's live predictions against its own training data, and a drift event
when the policy says the model should be retrained. The sequence is
:func:`pipelines.monitor.monitor_once`; the flow gives it Prefect."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runtime import PREFECT
from lakeloop.settings import load_settings


@flow(name="monitor", log_prints=True)
def monitor_champion(
    window_rows: int | None = None, window_minutes: float | None = None
) -> dict[str, Any]:
    """Compare the champion's recent predictions with its training data; ask for a retrain when
    drift or rising error passes the policy's thresholds."""
    from pipelines.monitor import monitor_once  # noqa: PLC0415 - in the run: see flows/__init__.py

    return monitor_once(
        load_settings(), window_rows=window_rows, window_minutes=window_minutes, runtime=PREFECT
    )
