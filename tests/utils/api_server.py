"""The real API process (``python -m api``) serving a real champion registered in a real MLflow
server, started by the stack launcher on free loopback ports."""

from __future__ import annotations

import dataclasses

import httpx

from lakeloop import registry
from lakeloop.dataset import DatasetSpec
from lakeloop.model import train
from lakeloop.settings import Settings, TrainingSettings
from tests.utils.training import lineage as model_lineage
from tests.utils.waiting import eventually
from tooling import market
from tooling.stack import Stack, services


def register_champion(settings: Settings, spec: DatasetSpec, *, seed: int, commit: str) -> str:
    """Train a small model, log and register it, make it the champion; returns its version."""
    frame = market.generate_batch(rows=2000, seed=seed)
    trained = train(frame, spec, TrainingSettings(n_estimators=30))
    lineage = model_lineage(spec, commit)
    client = registry.connect(settings)  # also points MLflow's fluent API here
    logged = registry.log_trained(
        settings, trained, spec=spec, training_data=frame, lineage=lineage
    )
    registry.record_decision(client, settings, logged=logged, reasons=[], champion=None)
    return logged.version


def start_api_with_champion(
    stack: Stack, spec: DatasetSpec, *, env: dict[str, str], seed: int = 31
) -> str:
    """Start MLflow, register a champion, start the API with ``env`` (its LAKELOOP_* settings)
    and wait until it serves the champion; returns the API's URL. ``stack.down()`` stops both."""
    settings = stack.settings
    available = {service.name: service for service in services(settings)}
    mlflow_server = stack.start(available["mlflow"])
    stack.wait(mlflow_server)
    register_champion(settings, spec, seed=seed, commit="1" * 64)
    api = stack.start(dataclasses.replace(available["api"], env=env))
    stack.wait(api)
    url = f"http://127.0.0.1:{settings.api.port}"
    wait_until_serving(url)
    return url


def wait_until_serving(url: str) -> None:
    """Wait until the API at ``url`` loaded its champion (``/readyz`` answers 200)."""
    eventually(
        lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200,
        what=f"the API at {url} serving its champion",
    )
