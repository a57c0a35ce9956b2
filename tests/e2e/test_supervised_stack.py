"""The stack keeps itself running: each service SIGKILLed in turn (with its whole process group,
as the OOM killer or a crash would) comes back on its own and `lakeloop status` counts the
restart; a batch ingested while Prefect was down is trained once; `lakeloop up` on the running
stack starts nothing; `lakeloop down` leaves no process behind, the supervisor included.

Every real part on loopback (the built-in lakeFS, MLflow, Prefect, the gateway, the API, the flow
server), driven through the `lakeloop` command as a user would.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from lakeloop import lakefs_client, loop
from tests.utils.waiting import eventually, eventually_value
from tests.utils.workspace import (
    RUN_DEADLINE_SECONDS,
    Workspace,
    new_workspace,
    processes_of,
    wait_settled,
)
from tooling import market, supervised

pytestmark = pytest.mark.e2e

KILLED_IN_TURN = ("prefect", "lakefs", "mlflow", "gateway", "api", "flows")
"""Prefect first: the batch ingested while it is down must train once it is back."""
RESTART_DEADLINE_SECONDS = 180.0
"""A service back and answering after a SIGKILL, on a loaded 2-core machine (Prefect: 15-60 s)."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = new_workspace(
        tmp_path_factory.mktemp("supervised"), LAKELOOP_LAKEFS__DOWNLOAD="false"
    )
    started = workspace.run("up")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    yield workspace
    workspace.run("down", timeout=180)


def _states(workspace: Workspace) -> dict[str, supervised.ServiceState]:
    found = supervised.status(workspace.settings)
    assert found is not None, "no stack runs in the workspace"
    return {state.name: state for state in found}


def _status_rows(output: str) -> dict[str, list[str]]:
    """The services table of `lakeloop status`, by service: its cells."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        if len(cells) == 7 and cells[0] in KILLED_IN_TURN:  # the table's columns
            rows[cells[0]] = cells
    return rows


def _back(workspace: Workspace, name: str, *, killed: supervised.ServiceState) -> None:
    """Wait until supervisord restarted ``name`` under a new pid and it answers again."""

    def answering() -> supervised.ServiceState | None:
        state = _states(workspace)[name]
        if state.state != "RUNNING" or state.pid == killed.pid:
            return None
        return state if not state.ready.startswith(("not answering", "-")) else None

    state = eventually_value(
        answering,
        what=f"{name} restarted and answering",
        timeout=RESTART_DEADLINE_SECONDS,
        interval=0.5,
    )
    assert state.restarts > killed.restarts


SCHEDULED_DEPLOYMENTS = ("monitor-champion", "reconcile-commits")
"""The deployments that run on a schedule (deployments.serve): the monitor and the reconcile."""


def test_the_scheduled_flows_get_their_next_runs_from_prefects_scheduler(
    workspace: Workspace,
) -> None:
    """Prefect's scheduler creates the next runs of a deployment with a schedule. With Prefect
    3.8.8 on SQLAlchemy 2.1 it failed on every pass ("Can't evaluate bulk DML statement"): the
    monitor and the reconcile never ran, while every event-triggered path still worked."""
    api = workspace.settings.prefect_api_url

    def scheduled() -> dict[str, int] | None:
        counts = {}
        for name in SCHEDULED_DEPLOYMENTS:
            runs = loop.prefect_request(
                "POST",
                f"{api}/flow_runs/filter",
                json={
                    "deployments": {"name": {"any_": [name]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                },
                timeout=10.0,
            )
            runs.raise_for_status()
            counts[name] = len(runs.json())
        return counts if all(counts.values()) else None

    eventually_value(
        scheduled,
        what=f"scheduled runs of {', '.join(SCHEDULED_DEPLOYMENTS)}",
        timeout=RESTART_DEADLINE_SECONDS,
        interval=1.0,
    )
    prefect_log = (workspace.settings.state_dir / "logs" / "prefect.log").read_text()
    assert "bulk DML" not in prefect_log


def test_killed_services_come_back_and_a_batch_ingested_meanwhile_trains_once(
    workspace: Workspace,
) -> None:
    settings = workspace.settings

    # `up` returns once every service answers; supervisord calls one RUNNING only after it
    # stayed up `started_after_seconds` (STARTING until then): all of them get there.
    def all_running() -> dict[str, supervised.ServiceState] | None:
        states = _states(workspace)
        return states if {state.state for state in states.values()} == {"RUNNING"} else None

    before = eventually_value(
        all_running,
        what="every service RUNNING once it stayed up past supervisord's startsecs",
        timeout=supervised.POLICY.started_after_seconds + 30,
        interval=0.5,
    )
    assert set(before) == set(KILLED_IN_TURN)

    # `lakeloop up` again: one stack, nothing started, every pid the same.
    again = workspace.run("up")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "the stack was running; started nothing" in again.stdout
    assert {name: state.pid for name, state in _states(workspace).items()} == {
        name: state.pid for name, state in before.items()
    }

    batch = settings.state_dir.parent / "while-prefect-was-down.csv"
    market.generate_batch(rows=1500, seed=41).to_csv(batch, index=False)
    commit = None
    for name in KILLED_IN_TURN:
        killed = _states(workspace)[name]
        os.killpg(killed.pid, signal.SIGKILL)
        if name == "prefect":
            ingested = workspace.run("ingest", str(batch), "--no-wait")
            assert ingested.returncode == 0, ingested.stdout[-3000:] + ingested.stderr[-3000:]
            commit = lakefs_client.head_commit(lakefs_client.connect(settings), settings)
        _back(workspace, name, killed=killed)
        if name == "prefect":
            assert commit is not None
            loop.wait_for_training(settings, commit_id=commit, timeout=RUN_DEADLINE_SECONDS)

    # The batch trained once: the spooled event was delivered once, and nothing is in flight.
    wait_settled(settings, flow="train")
    assert len(loop.training_runs(settings, commit_id=str(commit))) == 1
    served = eventually_value(
        lambda: loop.served_model(settings), what="the API serving the batch's model"
    )
    assert served["version"] == "1"

    # `lakeloop status` shows each service running again, restarted once.
    shown = workspace.run("status")
    assert shown.returncode == 0, shown.stdout[-3000:] + shown.stderr[-3000:]
    rows = _status_rows(shown.stdout)
    assert set(rows) == set(KILLED_IN_TURN), shown.stdout
    for cells in rows.values():
        assert cells[1] == "RUNNING", cells
        assert int(cells[5]) >= 1, cells
    assert "serving v1" in rows["api"][6]
    assert "events spooled for Prefect" in rows["gateway"][6]

    logs = workspace.run("logs", "gateway", "--lines", "5")
    assert logs.returncode == 0
    assert logs.stdout.strip()

    stopped = workspace.run("down", timeout=180)
    assert stopped.returncode == 0
    eventually(
        lambda: processes_of(workspace.settings.state_dir) == "",
        what="no process of the workspace left after `lakeloop down`",
    )
    assert supervised.status(settings) is None
