"""The training process itself dying mid-training, for real: the training pipeline the flow runs
(``pipelines.train.train_and_promote``) runs in a child process against a real MLflow server;
the child pauses at each step boundary and tells the parent through a pipe, and the parent
SIGKILLs it at the chosen one (no clean-up code in the child can run). The champion
must be the one before (or one the next attempt puts back), the registry must hold nothing that
passes for trained, and training the same commit again must work and promote normally.

The pauses are wrappers the child installs around the registry functions it calls; nothing in the
product code knows about them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from lakeloop import registry
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.settings import Settings
from tests.utils.killing import run_and_kill_at
from tests.utils.mlflow_server import mlflow_server
from tests.utils.training import (
    REGISTERED,
    registry_settings,
    train_commit,
    train_first_champion,
)
from tooling import market

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 300.0
"""How long the parent waits for the child to reach the next pause (spawn + training + logging)."""

# Step boundaries the child pauses at, in the order it reaches them.
RUN_STARTED = "the MLflow run started, before registration"
ALIAS_MOVED = "the champion alias moved, before the decision tag is written"
KILL_POINTS = (RUN_STARTED, REGISTERED, ALIAS_MOVED)

Pause = Callable[[str], None]


@dataclass(frozen=True)
class Registry:
    settings: Settings
    client: MlflowClient
    report: Path


@pytest.fixture(scope="module")
def mlflow_registry(
    tmp_path_factory: pytest.TempPathFactory, spec: DatasetSpec
) -> Iterator[Registry]:
    settings = registry_settings(tmp_path_factory.mktemp("crash"))
    with mlflow_server(settings):
        report = tmp_path_factory.mktemp("validation-report")
        train_first_champion(settings, spec, report)
        yield Registry(settings, registry.connect(settings), report=report)


def challenger_data() -> pd.DataFrame:
    """Every challenger here trains on the same data, so each ties the last and is promoted."""
    return market.generate_batch(rows=6000, seed=32)


def attempt_in_child(settings: Settings, commit: str, report: Path, pipe: Connection) -> None:
    """The child process: train ``commit``, announcing each step boundary on ``pipe`` and going on
    only when the parent answers (the parent kills it instead at the point under test)."""

    def pause(point: str) -> None:
        pipe.send(point)
        pipe.recv()

    register = registry.register
    set_tag = MlflowClient.set_model_version_tag

    def register_after_pause(*args: Any, **kwargs: Any) -> Any:
        pause(RUN_STARTED)  # log_trained calls this inside its active run
        return register(*args, **kwargs)

    def set_tag_after_pause(
        client: MlflowClient, name: str, version: str, key: str, value: str
    ) -> Any:
        if key == registry.TAG_GATE and value == "promoted":
            pause(ALIAS_MOVED)  # record_decision writes this last, after the alias move
        return set_tag(client, name, version, key, value)

    registry.register = register_after_pause  # type: ignore[assignment]
    MlflowClient.set_model_version_tag = set_tag_after_pause  # type: ignore[assignment,method-assign]
    spec = load_spec(settings.dataset)
    train_commit(settings, spec, challenger_data(), commit=commit, report=report, pause=pause)


def kill_attempt_at(settings: Settings, *, commit: str, report: Path, point: str) -> list[str]:
    """Start an attempt on ``commit`` in a child process, let it pass every pause before
    ``point``, and SIGKILL it there. Returns the pauses it reached."""
    return run_and_kill_at(
        attempt_in_child,
        (settings, commit, report),
        step=point,
        check=lambda: _before_kill(settings, point),
        deadline=DEADLINE_SECONDS,
    )


def _before_kill(settings: Settings, point: str) -> None:
    """At the alias-move pause, check that the child really is between the move and the tag."""
    if point != ALIAS_MOVED:
        return
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    champion = registry.champion(client, settings)
    assert champion is not None
    assert champion.tags[registry.TAG_GATE] == registry.GATE_PENDING


def champion_of(mlflow_registry: Registry) -> ModelVersion:
    """The version the champion alias points at (there always is one here)."""
    champion = registry.champion(mlflow_registry.client, mlflow_registry.settings)
    assert champion is not None
    return champion


@pytest.mark.parametrize("point", KILL_POINTS, ids=["run-started", "registered", "alias-moved"])
def test_training_process_killed_at_a_step_leaves_no_half_state_and_the_commit_trains_again(
    mlflow_registry: Registry, spec: DatasetSpec, point: str
) -> None:
    settings, client, name = (
        mlflow_registry.settings,
        mlflow_registry.client,
        mlflow_registry.settings.mlflow.model_name,
    )
    commit = f"{KILL_POINTS.index(point) + 1}" * 64
    champion_before = champion_of(mlflow_registry)

    reached = kill_attempt_at(settings, commit=commit, report=mlflow_registry.report, point=point)
    assert reached == [RUN_STARTED, REGISTERED, ALIAS_MOVED][: KILL_POINTS.index(point) + 1]

    # What the dead process left: no version without a finished run (except those an earlier
    # attempt abandoned); the attempt's run still RUNNING if it died inside it; a pending version
    # if it died after registering; nothing that counts as trained.
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags[registry.TAG_GATE] != registry.GATE_ABANDONED:
            assert version.run_id, version
            assert client.get_run(version.run_id).info.status == "FINISHED", version
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    assert experiment is not None
    [attempt] = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{registry.TAG_COMMIT}` = '{commit}'"
    )
    assert attempt.info.status == ("RUNNING" if point == RUN_STARTED else "FINISHED")
    half_versions = registry.versions_of_commit(client, settings, commit_id=commit)
    assert [v.tags[registry.TAG_GATE] for v in half_versions] == (
        [] if point == RUN_STARTED else [registry.GATE_PENDING]
    )
    assert registry.run_for_commit(client, settings, commit_id=commit) is None
    if point == ALIAS_MOVED:
        # The gate had decided to promote and moved the alias; only its decision tag is missing.
        # The version stays pending, so the next attempt on the commit puts the alias back on
        # the champion it replaced (its previous_champion tag) before it judges anything.
        assert champion_of(mlflow_registry).version == half_versions[0].version
        assert half_versions[0].tags[registry.TAG_PREVIOUS] == champion_before.version
    else:
        assert champion_of(mlflow_registry).version == champion_before.version

    # The same commit again (here, in this process): the half attempt is closed, and a new
    # version is judged against the champion from before the crash, and promoted.
    logged = train_commit(
        settings, spec, challenger_data(), commit=commit, report=mlflow_registry.report
    )
    assert logged is not None
    assert client.get_run(attempt.info.run_id).info.status == "FAILED"
    for half in half_versions:
        closed = client.get_model_version(name, half.version)
        assert closed.tags[registry.TAG_GATE] == registry.GATE_ABANDONED
        assert closed.aliases == []
    champion = champion_of(mlflow_registry)
    assert champion.version == logged.version
    assert champion.tags[registry.TAG_GATE] == "promoted"
    assert champion.tags[registry.TAG_PREVIOUS] == champion_before.version
    assert client.get_run(logged.run_id).info.status == "FINISHED"
    found = registry.run_for_commit(client, settings, commit_id=commit)
    assert found is not None
    assert found.info.run_id == logged.run_id
    assert (
        train_commit(
            settings, spec, challenger_data(), commit=commit, report=mlflow_registry.report
        )
        is None
    )
