"""Merges arriving together, for real: the whole training flow (``train_on_commit``) runs twice at
once, each in its own process as a Prefect worker would run it, against a real Prefect server
(with the one-slot promotion limit ``lakeloop-promote-<model>`` that `serve` creates), a real
MLflow server and the lakeFS-compatible server. The race is forced, not hoped for: each run's
runtime holds it at the promotion lock until both runs are there (``tests/utils/lock_witness.py``)
and records when it asked for the lock, got it and let go. Each commit must be trained exactly
once and the promotions must happen one after the other, the second run having waited for the
first: the later run judges against the champion the earlier one left. The same commit triggered
twice at once must end with exactly one promoted version."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.serve import ensure_promotion_lock
from lakefs_local import create_app as create_lakefs
from lakeloop import lakefs_client, registry
from lakeloop.ingest import write_parquet
from lakeloop.settings import Settings, load_settings
from pipelines.runtime import promotion_lock
from tests.utils.lock_witness import (
    ARRIVED,
    ASKED,
    ENDED,
    ENTERED,
    LEFT,
    RUN_FLOW,
    Event,
    read_events,
)
from tests.utils.mlflow_server import mlflow_server
from tests.utils.net import free_port, serve_in_thread
from tooling import market
from tooling.stack import Stack, child_env, services

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LAKEFS_SECRET = "concurrent-lakefs-secret-0123456789"
FLOW_TIMEOUT_SECONDS = 600
# Thresholds loose enough for a small model; every commit here carries the same rows, so each
# challenger ties the champion and is promoted (what makes the order of promotions visible).
TRAINING = {"max_mae": 90_000, "max_rmse": 120_000, "n_estimators": 40}


@dataclass(frozen=True)
class Services:
    settings: Settings
    env: dict[str, str]
    mlflow: MlflowClient
    lakefs: Any
    folder: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("concurrent")
    ports = {name: free_port() for name in ("lakefs", "mlflow", "prefect")}
    settings = load_settings(
        state_dir=root / "state",
        lakefs={"port": ports["lakefs"], "secret_access_key": LAKEFS_SECRET},
        mlflow={"port": ports["mlflow"]},
        prefect={"port": ports["prefect"]},
        training=TRAINING,
        api={"verify_deploy": False},
    )
    # What a flow run started by a worker sees: the stack's environment and these settings.
    env = {
        k: v for k, v in child_env(settings).items() if not k.startswith(("LAKELOOP_", "MLFLOW_"))
    }
    env.update(
        {
            "LAKELOOP_STATE_DIR": str(settings.state_dir),
            "PREFECT_API_URL": settings.prefect_api_url,
            "LAKELOOP_LAKEFS__PORT": str(ports["lakefs"]),
            "LAKELOOP_LAKEFS__SECRET_ACCESS_KEY": LAKEFS_SECRET,
            "LAKELOOP_MLFLOW__PORT": str(ports["mlflow"]),
            "LAKELOOP_PREFECT__PORT": str(ports["prefect"]),
            "LAKELOOP_API__VERIFY_DEPLOY": "false",
            **{f"LAKELOOP_TRAINING__{k.upper()}": str(v) for k, v in TRAINING.items()},
        }
    )
    lakefs_app = create_lakefs(
        data_dir=root / "lakefs",
        access_key_id=settings.lakefs.access_key_id,
        secret_access_key=LAKEFS_SECRET,
    )
    stack = Stack(settings)
    [prefect] = [s for s in services(settings) if s.name == "prefect"]
    with serve_in_thread(lakefs_app, port=ports["lakefs"]), mlflow_server(settings):
        try:
            stack.wait(stack.start(prefect))
            with temporary_settings({PREFECT_API_URL: settings.prefect_api_url}):
                ensure_promotion_lock(settings)
            lakefs = lakefs_client.connect(settings)
            lakefs_client.ensure_repository(lakefs, settings)
            yield Services(settings, env, registry.connect(settings), lakefs, root)
        finally:
            stack.down()


def commit_on_main(running: Services, path: str, content: bytes) -> str:
    """A commit straight onto the production branch (its webhook is not what is tested here)."""
    branch = lakefs_client.main_reference(running.lakefs, running.settings)
    branch.object(path).upload(data=content, mode="wb")
    return str(branch.commit(message=f"add {path}").get_commit().id)


def data_commit(running: Services, name: str) -> str:
    """A commit that puts the one table every commit here trains on (the same rows each time)."""
    frame = market.generate_batch(rows=2000, seed=41)
    path = write_parquet(frame, running.folder / f"{name}.parquet")
    return commit_on_main(running, "data/sales.parquet", path.read_bytes())


def train_at_once(
    running: Services, commits: list[str], *, witness: Path
) -> list[dict[str, Any] | str]:
    """Start one training flow process per commit, all at once, meeting at the promotion lock
    (the shared folder ``witness`` holds the barrier and the lock's log; run ``i`` is labelled
    ``str(i)``); wait for every one. Each result is the flow's return value, or the end of the
    process's output when it failed."""
    repository = running.settings.lakefs.repository
    witness.mkdir(parents=True, exist_ok=True)
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RUN_FLOW,
                repository,
                commit,
                str(witness),
                str(len(commits)),
                str(label),
            ],
            cwd=ROOT,
            env=running.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for label, commit in enumerate(commits)
    ]
    results: list[dict[str, Any] | str] = []
    for process in processes:
        output, _ = process.communicate(timeout=FLOW_TIMEOUT_SECONDS)
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        results.append(json.loads(lines[-1].removeprefix("RESULT ")) if lines else output[-3000:])
    return results


def turns_at_the_lock(events: list[Event]) -> tuple[str, str]:
    """The two runs, in the order they held the promotion lock, once the log shows the race was
    real and the lock decided it: both runs arrived before either got the lock, they held it one
    after the other, and the second asked for it before the first let go, so it waited."""
    position = {(event.run, event.what): index for index, event in enumerate(events)}
    described = [(event.run, event.what) for event in events]
    inside = [(event.run, event.what) for event in events if event.what in (ENTERED, LEFT)]
    assert len(inside) == 4, described
    first = inside[0][0]
    [second] = {run for run, _ in inside} - {first}
    assert inside == [(first, ENTERED), (first, LEFT), (second, ENTERED), (second, LEFT)], described
    assert max(position[run, ARRIVED] for run in (first, second)) < position[first, ENTERED], (
        described
    )
    assert position[second, ASKED] < position[first, LEFT], described
    return first, second


def versions_of(running: Services, commit: str) -> list[ModelVersion]:
    return registry.versions_of_commit(running.mlflow, running.settings, commit_id=commit)


def runs_of(running: Services, commit: str) -> list[Any]:
    experiment = running.mlflow.get_experiment_by_name(running.settings.mlflow.experiment)
    assert experiment is not None
    return list(
        running.mlflow.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{registry.TAG_COMMIT}` = '{commit}'",
        )
    )


def describe(running: Services, commit: str, versions: list[ModelVersion]) -> str:
    """What MLflow holds for a commit, for a failure message: each version's run, its
    experiment and tags, and the experiments there are."""
    runs = [running.mlflow.get_run(v.run_id) for v in versions if v.run_id]
    held = [(r.info.run_id, r.info.experiment_id, r.info.status, r.data.tags) for r in runs]
    experiments = [(e.experiment_id, e.name) for e in running.mlflow.search_experiments()]
    return f"commit {commit}: versions {[v.version for v in versions]}, runs {held}, {experiments}"


def promotion_windows(
    running: Services, commits: list[str]
) -> dict[str, tuple[datetime, datetime]]:
    """Per commit, from the Prefect server: when its flow run started judging (score_champion
    began) and when it finished promoting (gate_and_promote ended), i.e. its time in the lock."""
    api = running.settings.prefect_api_url
    flow_runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
    by_commit = {run["parameters"]["commit_id"]: run["id"] for run in flow_runs}
    windows = {}
    for commit in commits:
        body = {"flow_runs": {"id": {"any_": [by_commit[commit]]}}}
        task_runs = httpx.post(f"{api}/task_runs/filter", json=body, timeout=10).json()
        steps = {run["name"].rsplit("-", 1)[0]: run for run in task_runs}
        begin = datetime.fromisoformat(steps["score_champion"]["start_time"])
        end = datetime.fromisoformat(steps["gate_and_promote"]["end_time"])
        windows[commit] = (begin, end)
    return windows


def test_two_merges_at_once_are_each_trained_once_and_promoted_one_after_the_other(
    running: Services, tmp_path: Path
) -> None:
    """Two commits merged together are both trained and both promoted, one after the other: the
    run that got the promotion lock second waited for the first to let go, then judged its model
    against the champion the first had just made."""
    first = data_commit(running, "first")
    # The second merge brings no new rows (only a note), so its model ties the first one.
    second = commit_on_main(running, "docs/notes.md", b"# second merge\n")
    champion_before = registry.champion(running.mlflow, running.settings)

    results = train_at_once(running, [first, second], witness=tmp_path)

    earlier_run, later_run = turns_at_the_lock(read_events(tmp_path))
    assert all(isinstance(result, dict) for result in results), results
    statuses = [result["status"] for result in results if isinstance(result, dict)]
    assert statuses == ["promoted", "promoted"], results
    # Each commit trained exactly once: one run, one version, judged.
    for commit in (first, second):
        runs, versions = runs_of(running, commit), versions_of(running, commit)
        assert len(runs) == len(versions) == 1, describe(running, commit, versions)
        [run], [version] = runs, versions
        assert run.info.status == "FINISHED"
        assert version.run_id == run.info.run_id
        assert version.tags[registry.TAG_GATE] == "promoted"
    # Serialised: whichever took the lock second (it holds the alias now) judged against the
    # champion the first one left.
    champion = registry.champion(running.mlflow, running.settings)
    assert champion is not None
    [later] = [
        v for c in (first, second) for v in versions_of(running, c) if v.version == champion.version
    ]
    [earlier] = [
        v for c in (first, second) for v in versions_of(running, c) if v.version != champion.version
    ]
    # The run that held the lock second is the one whose version is champion now.
    commits = [first, second]
    assert later.tags[registry.TAG_COMMIT] == commits[int(later_run)]
    assert earlier.tags[registry.TAG_COMMIT] == commits[int(earlier_run)]
    assert later.tags[registry.TAG_PREVIOUS] == earlier.version
    assert earlier.tags.get(registry.TAG_PREVIOUS) == (
        champion_before.version if champion_before else None
    )
    # And the Prefect server saw the two promotions one after the other, never overlapping.
    (begin_a, end_a), (begin_b, end_b) = promotion_windows(running, [first, second]).values()
    assert end_a <= begin_b or end_b <= begin_a, ((begin_a, end_a), (begin_b, end_b))
    limit = httpx.get(
        f"{running.settings.prefect_api_url}/v2/concurrency_limits/{promotion_lock(running.settings)}",
        timeout=10,
    ).json()
    assert limit["limit"] == 1
    assert limit["active_slots"] == 0


def test_the_same_commit_triggered_twice_at_once_is_promoted_once(
    running: Services, tmp_path: Path
) -> None:
    """The same commit triggered twice at once ends with exactly one promoted version. Both runs
    train it (the barrier holds each at the promotion lock until both are there, so neither can
    find the commit already trained and skip it); the one whose version the other abandoned,
    or the second at the gate, which finds the commit trained meanwhile, fails naming why. A
    later trigger finds the commit trained and does nothing."""
    # New rows, so this commit is not a copy of an earlier one.
    frame = market.generate_batch(rows=2000, seed=43)
    path = write_parquet(frame, running.folder / "twice.parquet")
    commit = commit_on_main(running, "data/more.parquet", path.read_bytes())

    results = train_at_once(running, [commit, commit], witness=tmp_path / "race")

    first, second = turns_at_the_lock(read_events(tmp_path / "race"))
    outcomes = {
        str(label): result["status"] if isinstance(result, dict) else "failed"
        for label, result in enumerate(results)
    }
    assert sorted(outcomes.values()) == ["failed", "promoted"], results
    [loser] = [label for label, status in outcomes.items() if status == "failed"]
    [winner] = [label for label, status in outcomes.items() if status == "promoted"]
    refusal = results[int(loser)]
    assert isinstance(refusal, str)
    if loser == first:
        # Nothing was judged before it: its version was abandoned by the other run registering.
        assert "was abandoned by a later attempt on its commit" in refusal, refusal
    else:
        assert "abandoned by a later attempt" in refusal or "trained meanwhile" in refusal, refusal
    assert {first, second} == {winner, loser}

    versions = versions_of(running, commit)
    assert len(versions) == 2, [v.tags for v in versions]  # each run registered one version
    promoted = [v for v in versions if v.tags[registry.TAG_GATE] == "promoted"]
    [abandoned] = [v for v in versions if v.tags[registry.TAG_GATE] == registry.GATE_ABANDONED]
    assert len(promoted) == 1, (results, [v.tags for v in versions])
    won = results[int(winner)]
    assert isinstance(won, dict)
    assert promoted[0].version == won["version"]
    assert promoted[0].run_id == won["run_id"]
    assert abandoned.run_id is not None
    assert abandoned.run_id != won["run_id"]
    assert running.mlflow.get_run(abandoned.run_id).info.status == "FAILED"
    champion = registry.champion(running.mlflow, running.settings)
    assert champion is not None
    assert champion.version == promoted[0].version
    found = registry.run_for_commit(running.mlflow, running.settings, commit_id=commit)
    assert found is not None
    assert found.info.run_id == won["run_id"]
    # A third trigger later finds it trained and does nothing (it never reaches the lock).
    [again] = train_at_once(running, [commit], witness=tmp_path / "again")
    assert again == {"status": "skipped", "reason": "already trained", "run_id": won["run_id"]}
    assert [event.what for event in read_events(tmp_path / "again")] == [ENDED]
