"""MLflow dying in the middle of a training, for real: the MLflow server process is killed (SIGKILL,
no clean shutdown) at a chosen step of the training flow's own tasks (called without Prefect),
then started again on the same database and artifacts. The step must fail naming what it was
doing, the registry must hold no half state, and training the same commit again must work."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from lakeloop import registry
from lakeloop.dataset import DatasetSpec
from lakeloop.settings import Settings
from pipelines.train import already_trained
from tests.utils.mlflow_server import MlflowServer
from tests.utils.training import registry_settings, train_commit, train_first_champion
from tooling import market

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Registry:
    settings: Settings
    server: MlflowServer
    client: MlflowClient
    report: Path


@pytest.fixture(scope="module")
def mlflow_registry(
    tmp_path_factory: pytest.TempPathFactory, spec: DatasetSpec
) -> Iterator[Registry]:
    settings = registry_settings(tmp_path_factory.mktemp("faults"))
    server = MlflowServer(settings)
    with pytest.MonkeyPatch.context() as patch:
        # A dead server fails the call at once instead of after MLflow's minutes of backoff;
        # the flow's tasks add their own retries on top of MLflow's in production.
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        server.start()
        try:
            report = tmp_path_factory.mktemp("validation-report")
            train_first_champion(settings, spec, report)
            yield Registry(settings, server, registry.connect(settings), report=report)
        finally:
            server.stop()


def _champion(mlflow_registry: Registry) -> ModelVersion:
    """The version the champion alias points at (there always is one here)."""
    settings = mlflow_registry.settings
    return mlflow_registry.client.get_model_version_by_alias(
        settings.mlflow.model_name, settings.mlflow.champion_alias
    )


def _challenger_data() -> pd.DataFrame:
    """Every challenger here trains on the same data, so each ties the last and is promoted."""
    return market.generate_batch(rows=6000, seed=32)


def _kill_before(
    server: MlflowServer, function: Callable[..., Any], *, when: Callable[..., bool]
) -> Callable[..., Any]:
    """``function``, except that the first call for which ``when(*args)`` holds kills the MLflow
    server just before it runs."""
    killed = False

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal killed
        if not killed and when(*args, **kwargs):
            killed = True
            server.kill()
        return function(*args, **kwargs)

    return wrapper


def _always(*_: Any, **__: Any) -> bool:
    return True


def _promoted_tag(_client: Any, _name: str, _version: str, key: str, value: str) -> bool:
    return key == registry.TAG_GATE and value == "promoted"


# Where the server dies, what the failed step must say, and what it leaves until the next attempt.
KILL_POINTS = {
    "before registration": (
        (registry, "register", _always),
        "registering the model of run",
    ),
    "before the gate decision": (
        (registry, "record_decision", _always),
        "recording the gate decision",
    ),
    "after the alias move, before the decision is written": (
        (MlflowClient, "set_model_version_tag", _promoted_tag),
        "recording the gate decision",
    ),
}


@pytest.mark.parametrize("point", KILL_POINTS, ids=list(KILL_POINTS))
def test_mlflow_killed_mid_training_leaves_no_half_state_and_the_commit_trains_again(
    mlflow_registry: Registry, spec: DatasetSpec, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, client, name = (
        mlflow_registry.settings,
        mlflow_registry.client,
        mlflow_registry.settings.mlflow.model_name,
    )
    commit = f"{list(KILL_POINTS).index(point) + 1}" * 64
    champion_before = _champion(mlflow_registry)
    (owner, attribute, when), message = KILL_POINTS[point]
    killing = _kill_before(mlflow_registry.server, getattr(owner, attribute), when=when)
    monkeypatch.setattr(owner, attribute, killing)

    with pytest.raises(registry.TrackingError, match=message) as failure:
        train_commit(
            settings, spec, _challenger_data(), commit=commit, report=mlflow_registry.report
        )
    assert settings.mlflow_tracking_uri in str(failure.value)
    monkeypatch.undo()
    mlflow_registry.server.start()

    # What the dead server was left with: every version has a finished run (or, from an earlier
    # test, says it was abandoned); the champion alias moved only where the gate had already
    # decided to move it.
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags[registry.TAG_GATE] != registry.GATE_ABANDONED:
            assert version.run_id, version
            assert client.get_run(version.run_id).info.status == "FINISHED", version
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    assert experiment is not None
    [attempt] = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{registry.TAG_COMMIT}` = '{commit}'"
    )
    half_versions = registry.versions_of_commit(client, settings, commit_id=commit)
    assert [v.tags[registry.TAG_GATE] for v in half_versions] == (
        [] if point == "before registration" else [registry.GATE_PENDING]
    )
    if point.startswith("after the alias move"):
        assert _champion(mlflow_registry).version == half_versions[0].version
    else:
        assert _champion(mlflow_registry).version == champion_before.version
    assert already_trained(settings, commit) is None

    # The same commit again: the half attempt is closed, a new version is judged and promoted
    # against the champion the failed attempt found.
    logged = train_commit(
        settings, spec, _challenger_data(), commit=commit, report=mlflow_registry.report
    )
    assert logged is not None
    assert client.get_run(attempt.info.run_id).info.status == "FAILED"
    for half in half_versions:
        closed = client.get_model_version(name, half.version)
        assert closed.tags[registry.TAG_GATE] == registry.GATE_ABANDONED
        assert closed.aliases == []
    champion = _champion(mlflow_registry)
    assert champion.version == logged.version
    assert champion.tags[registry.TAG_GATE] == "promoted"
    assert champion.tags[registry.TAG_PREVIOUS] == champion_before.version
    assert already_trained(settings, commit) == logged.run_id
