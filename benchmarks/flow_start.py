"""How long an event takes to become a running flow run, and what each run's process costs:
Prefect's ``serve()`` (each run a new ``python -m prefect.engine`` interpreter) beside lakeloop's
flow server (each run forked from a warm parent, ``deployments/warm.py``), one after the other on
the same machine: ``python -m benchmarks.flow_start [--runs 5]`` from the repository's root.

Each side gets its own Prefect server in a scratch folder and serves one probe deployment whose
flow module imports what lakeloop's flows import (``deployments.serve``) and whose body imports
Great Expectations, as a validating run does, then runs one task; an event triggers it, one run
at a time (the flow server's limit), after one warm-up run. From the run's state history: event
-> flow run created (Prefect's trigger and action), created -> Pending (the runner's poll; with
one slot, also the previous run's process exiting), Pending -> Running (the run's process started
and its imports done), Running -> first task. Medians; prints a table, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, serve, task
from prefect.events import DeploymentEventTrigger

from deployments.serve import Declared, runner_deployment, serve_forked
from lakeloop.events import emit
from lakeloop.settings import load_settings
from tooling.stack import Service, Stack, services

EVENT = "lakeloop.benchmark.probe"
RESOURCE = "lakeloop.benchmark"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
HOPS = (
    "event -> flow run created",
    "created -> Pending (poll)",
    "Pending -> Running (process)",
    "Running -> first task",
    "event -> Running",
    "event -> first task",
)


@task
def first_step() -> float:
    return time.time()


@flow(name="start-probe")
def probe(tag: str) -> float:
    """What a validating run does first: import Great Expectations, then run a task."""
    import great_expectations  # noqa: F401, PLC0415 - what the first validation imports

    return first_step()


def probe_deployment() -> Declared:
    return Declared(
        name="probe",
        flow=probe,
        entrypoint="benchmarks/flow_start.py:probe",
        description="The benchmark's probe.",
        triggers=[
            DeploymentEventTrigger(
                name="probe",
                expect={EVENT},
                match={"prefect.resource.id": RESOURCE},
                parameters={"tag": "{{ event.payload.tag }}"},
            )
        ],
    )


def serve_probe(mode: str) -> None:
    """The probe served as Prefect's ``serve()`` does (``cold``) or as lakeloop's flow server
    does (``warm``)."""
    if mode == "warm":
        serve_forked([probe_deployment()], limit=1)
    else:
        serve(runner_deployment(probe_deployment()), limit=1)


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


def probe_event(tag: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "event": EVENT,
        "occurred": datetime.now(UTC).isoformat(),
        "resource": {"prefect.resource.id": RESOURCE},
        "payload": {"tag": tag},
    }


def run_of(api: str, tag: str) -> dict[str, Any] | None:
    body = {"flows": {"name": {"any_": ["start-probe"]}}}
    runs = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=30).json()
    return next((run for run in runs if run["parameters"].get("tag") == tag), None)


def finished(api: str, tag: str, *, timeout: float = 600.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = run_of(api, tag)
        if run and run["state_type"] in FINAL:
            return run
        time.sleep(0.2)
    raise TimeoutError(f"no finished probe run {tag}")


def seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def hops(api: str, run: dict[str, Any], sent: float) -> dict[str, float]:
    states = httpx.get(
        f"{api}/flow_run_states/", params={"flow_run_id": run["id"]}, timeout=30
    ).json()
    first: dict[str, float] = {}
    for state in sorted(states, key=lambda s: s["timestamp"]):
        first.setdefault(state["name"], seconds(state["timestamp"]))
    body = {"flow_runs": {"id": {"any_": [run["id"]]}}}
    tasks = httpx.post(f"{api}/task_runs/filter", json=body, timeout=30).json()
    created, pending = seconds(run["created"]), first["Pending"]
    running = first["Running"]
    first_task = min(seconds(t["start_time"]) for t in tasks)
    return dict(
        zip(
            HOPS,
            (
                created - sent,
                pending - created,
                running - first.get("Submitting", pending),
                first_task - running,
                running - sent,
                first_task - sent,
            ),
            strict=True,
        )
    )


def trial(mode: str, runs: int, root: Path) -> list[dict[str, float]]:
    """``runs`` triggered probe runs on a fresh Prefect server served the ``mode`` way."""
    settings = load_settings(state_dir=root / mode, prefect={"port": free_port()})
    api = settings.prefect_api_url
    stack = Stack(settings)
    [prefect] = [s for s in services(settings) if s.name == "prefect"]
    server = Service(
        name=f"probe-{mode}",
        argv=[sys.executable, "-m", "benchmarks.flow_start", "--serve", mode],
        port=0,
        health_url=f"{api}/deployments/name/start-probe/probe",
        env={"PYTHONPATH": os.getcwd()},
    )
    measured = []
    try:
        stack.wait(stack.start(prefect))
        stack.wait(stack.start(server))
        # The triggers service loads new automations on its own schedule: fire until one runs.
        while True:
            tag = f"warm-up-{secrets.token_hex(3)}"
            emit(api, probe_event(tag))
            time.sleep(5)
            if run_of(api, tag):
                break
        finished(api, tag)
        for _ in range(runs):
            time.sleep(2)
            tag = f"{mode}-{secrets.token_hex(4)}"
            sent = time.time()
            emit(api, probe_event(tag))
            measured.append(hops(api, finished(api, tag), sent))
            print(mode, "  ".join(f"{v:6.2f}" for v in measured[-1].values()), flush=True)
    finally:
        stack.down()
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--serve", choices=("cold", "warm"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_probe(args.serve)
        return
    root = Path(tempfile.mkdtemp(prefix="flow-start-"))
    table = {
        "serve() (cold)": trial("cold", args.runs, root),
        "forked (warm)": trial("warm", args.runs, root),
    }
    print(f"\nmedians of {args.runs} runs, seconds; load average {os.getloadavg()[0]:.1f}")
    print(f"{'hop':32s}" + "".join(f"{name:>18s}" for name in table))
    for hop in HOPS:
        cells = "".join(
            f"{statistics.median(r[hop] for r in rows):18.2f}" for rows in table.values()
        )
        print(f"{hop:32s}{cells}")


if __name__ == "__main__":
    main()
