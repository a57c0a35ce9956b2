"""Flow runs forked from the warm process (``deployments.warm``), for real: a real Prefect server
and the flow server's own ``serve_forked``, serving a witness flow (``tests/utils/forked_flows.py``)
with a limit of two runs at once. Each run is still a Prefect flow run in its own process, started
warm: a run that SIGKILLs its own process is marked Crashed while the run beside it carries on and
completes, a run after it still starts (the warm parent survived), and never more than two run at
once."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from lakeloop.loop import FINAL_STATES, FlowRun, flow_run_logs, prefect_request
from lakeloop.settings import Settings, load_settings
from tests.utils.forked_flows import DEPLOYMENT, FLOW
from tests.utils.net import free_port
from tests.utils.waiting import eventually, eventually_value
from tooling.stack import Service, Stack, services

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 2
RUN_SECONDS = 300.0
"""How long a run may take to start and finish on a loaded machine (the warm parent imports the
flows' libraries once, on its first start)."""


@dataclass(frozen=True)
class Served:
    settings: Settings
    deployment_id: str
    runner_pid: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("forked")
    settings = load_settings(state_dir=root / "state", prefect={"port": free_port()})
    stack = Stack(settings)
    [prefect] = [s for s in services(settings) if s.name == "prefect"]
    api = settings.prefect_api_url
    flows = Service(
        name="flows",
        argv=[sys.executable, "-m", "tests.utils.forked_flows", str(LIMIT)],
        port=0,
        health_url=f"{api}/deployments/name/{FLOW}/{DEPLOYMENT}",
        env={"PYTHONPATH": str(ROOT)},
    )
    try:
        stack.wait(stack.start(prefect))
        running = stack.start(flows)
        stack.wait(running)
        found = httpx.get(f"{api}/deployments/name/{FLOW}/{DEPLOYMENT}", timeout=10).json()
        yield Served(settings, found["id"], running.process.pid)
    finally:
        stack.down()


def start(served: Served, name: str, folder: Path, *, crash: bool = False) -> str:
    """Create a run of the witness deployment; its id."""
    created = prefect_request(
        "POST",
        f"{served.settings.prefect_api_url}/deployments/{served.deployment_id}/create_flow_run",
        json={"parameters": {"name": name, "folder": str(folder), "crash": crash}},
        timeout=10.0,
    )
    created.raise_for_status()
    return str(created.json()["id"])


def run(served: Served, run_id: str) -> FlowRun:
    response = prefect_request(
        "GET", f"{served.settings.prefect_api_url}/flow_runs/{run_id}", timeout=10.0
    )
    response.raise_for_status()
    return FlowRun.from_api(response.json())


def finished(served: Served, run_id: str) -> FlowRun:
    return eventually_value(
        lambda: (found := run(served, run_id)).state in FINAL_STATES and found,
        what=f"flow run {run_id} finished",
        timeout=RUN_SECONDS,
        interval=0.5,
    )


def running_span(served: Served, run_id: str) -> tuple[datetime, datetime]:
    """When the run entered Running and when it left it, from its state history."""
    states = httpx.get(
        f"{served.settings.prefect_api_url}/flow_run_states/",
        params={"flow_run_id": run_id},
        timeout=10,
    ).json()
    states.sort(key=lambda state: state["timestamp"])
    times = [datetime.fromisoformat(state["timestamp"]) for state in states]
    kinds = [state["type"] for state in states]
    began = kinds.index("RUNNING")
    return times[began], times[began + 1]


def started_in(folder: Path, name: str) -> tuple[int, bool]:
    """The process the run ran in, and whether it began warm (Great Expectations imported and
    MLflow's distribution map built before its body ran)."""
    pid, warm = (folder / f"{name}.started").read_text().split()
    return int(pid), warm == "True"


def test_a_run_that_kills_its_process_is_crashed_and_the_run_beside_it_completes(
    served: Served, tmp_path: Path
) -> None:
    """A run SIGKILLed mid-flight (as the OOM killer would) ends Crashed, and only it: the run that
    was running beside it in the same flow server completes, with its logs, and a run started
    after the crash is forked from the same warm parent and completes too. Every run ran in its
    own process, not the flow server's, with Great Expectations already imported."""
    survivor = start(served, "survivor", tmp_path)
    eventually(
        (tmp_path / "survivor.started").exists,
        what="the survivor run started",
        timeout=RUN_SECONDS,
    )
    victim = start(served, "victim", tmp_path, crash=True)

    crashed = finished(served, victim)
    assert crashed.state == "CRASHED", crashed
    assert run(served, survivor).state == "RUNNING"  # the kill took only its own run
    (tmp_path / "survivor.go").touch()
    completed = finished(served, survivor)
    assert completed.state == "COMPLETED", completed
    # Its last lines reach Prefect after its process flushed them on the way out.
    eventually(
        lambda: "witness survivor: done" in flow_run_logs(served.settings, survivor),
        what="the survivor's last log line in Prefect",
        interval=0.5,
    )

    after = start(served, "after", tmp_path)
    (tmp_path / "after.go").touch()
    assert finished(served, after).state == "COMPLETED"

    started = {name: started_in(tmp_path, name) for name in ("survivor", "victim", "after")}
    pids = {pid for pid, _ in started.values()}
    assert len(pids) == 3, started  # one process per run
    assert served.runner_pid not in pids
    assert all(warm for _, warm in started.values()), started


def test_no_more_runs_at_once_than_the_limit(served: Served, tmp_path: Path) -> None:
    """Three runs asked for at once: two run, the third starts only once one of them ended."""
    names = ["first", "second", "third"]
    ids = {name: start(served, name, tmp_path) for name in names}
    eventually(
        lambda: sum((tmp_path / f"{name}.started").exists() for name in names) == LIMIT,
        what=f"{LIMIT} runs started",
        timeout=RUN_SECONDS,
    )
    waiting = [name for name in names if not (tmp_path / f"{name}.started").exists()]
    [late] = waiting
    assert run(served, ids[late]).state in {"SCHEDULED", "PENDING"}
    for name in names:
        (tmp_path / f"{name}.go").touch()
    assert all(finished(served, ids[name]).state == "COMPLETED" for name in names)

    spans = {name: running_span(served, ids[name]) for name in names}
    early_ends = sorted(end for name, (_, end) in spans.items() if name != late)
    assert spans[late][0] >= early_ends[0], spans  # it began once a slot was free
    assert len({started_in(tmp_path, name)[0] for name in names}) == len(names)
