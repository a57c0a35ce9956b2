"""Training flow: a lakeFS commit in, a registered (and maybe promoted) model out.

The sequence is :func:`pipelines.train.train_commit`; the flow gives it Prefect (each step a task,
the promotion lock a global concurrency limit, the reports artifacts).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runtime import PREFECT
from lakeloop.dataset import load_spec
from lakeloop.settings import load_settings


@flow(name="train", flow_run_name="train-{commit_id:.8}", log_prints=True)
def train_on_commit(
    repository: str,
    commit_id: str,
    reason: str = "manual",
    tune: bool = False,
    again: bool = False,
) -> dict[str, Any]:
    """Validate the data at a lakeFS commit, train XGBoost (with ``tune``, the best of
    ``training.tune_trials`` hyperparameter trials, each a nested MLflow run), register it, and
    promote it if good. A commit already trained is skipped unless ``again`` asks for a new,
    recorded attempt (after the thresholds or the settings changed)."""
    from pipelines import train  # noqa: PLC0415 - in the run: see flows/__init__.py

    settings = load_settings()
    spec = load_spec(settings.dataset)
    return train.train_commit(
        settings,
        spec,
        repository,
        commit_id,
        reason=reason,
        tune=tune,
        again=again,
        runtime=PREFECT,
    )
