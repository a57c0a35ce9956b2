"""Reconcile flow: train the production commits whose trigger was lost (webhooks lost before
the gateway, Prefect restarted); which commits count is :mod:`pipelines.reconcile`'s docstring."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import flow

from flows.runtime import PREFECT
from flows.train import train_on_commit
from lakeloop.settings import load_settings
from pipelines.reconcile_defaults import DEFAULT_DEPTH, DEFAULT_MIN_AGE_MINUTES, Mode


@flow(name="reconcile", flow_run_name="reconcile-{mode}", log_prints=True)
def reconcile_commits(
    mode: Mode = "newest",
    depth: int = DEFAULT_DEPTH,
    min_age_minutes: float = DEFAULT_MIN_AGE_MINUTES,
) -> dict[str, Any]:
    """Train the production commits whose trigger was lost: only the newest commit with data
    (``newest``), or every missed one oldest first (``all``). Each is a training subflow run."""
    from pipelines import reconcile  # noqa: PLC0415 - in the run: see flows/__init__.py

    settings = load_settings()
    reconciled = reconcile.reconcile(
        settings,
        train=train_on_commit,
        mode=mode,
        depth=depth,
        min_age=timedelta(minutes=min_age_minutes),
        runtime=PREFECT,
    )
    return reconciled.result(mode)
