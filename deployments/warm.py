"""Flow runs that start warm: each is forked from a process that has already imported Prefect,
MLflow, XGBoost, Great Expectations and lakeloop's flows, instead of a new interpreter.

Why. Prefect's ``serve()`` starts every flow run as ``python -m prefect.engine``: a new
interpreter that imports the flow's module again (Prefect, MLflow, XGBoost, pandas, lakeFS; for
the monitor, Evidently), and Great Expectations once the run validates. Measured on the 2-core
build machine with ``python -m benchmarks.flow_start`` (a triggered flow that imports what
lakeloop's flows import, then Great Expectations; medians of 5 runs, with the machine loaded 7-9
by other work; idle, the cold start was 4.3 s and a monitor run's 10 s)::

    hop                                       cold (serve)   warm (forked)
    event -> flow run created                     0.87 s        0.36 s
    created -> Pending (runner poll)              7.23 s        0.68 s
    Pending -> Running (process + imports)       31.66 s        1.03 s
    Running -> first task (GX import)             7.50 s        0.22 s
    event -> first task                          49.11 s        2.11 s

A second run of the benchmark itself, with the machine loaded 13-17: event -> first task 64.6 s
cold, 5.9 s warm (Pending -> Running 39.7 s and 2.0 s).

With one run at a time, the next run also waits for the previous run's process to exit: an
interpreter that imported the flows' libraries took 7-11 s to finalise here (its ``atexit``
functions 0.3 ms of it), where a forked child flushes Prefect's log and event workers (they drain
at thread shutdown, which ``multiprocessing`` runs) and ends with ``os._exit`` (created -> Pending
above). Functions that libraries register with ``atexit`` do not run in a forked child; of those
imported here only MLflow's (end a run left active) matters, and lakeloop ends its MLflow runs
itself (``lakeloop/registry.py``); a run left active by a crash is what its recovery handles.

What it costs: the warm parent stays resident beside the runner (about 470-580 MB RSS, 416 MB
PSS, measured in the e2e stack), shared copy-on-write with the runs it forks; and a flow's code is
the code imported when the flow server started (``lakeloop up`` again, or a restart of the
``flows`` service, picks up an edit; ``serve()`` read the flow's file again for every run).

How. Python's ``forkserver`` start method is the warm parent: a single-threaded process, started
once beside the runner, that imports :data:`PRELOADED` and then forks one child per flow run.
The child runs the flow run exactly as Prefect's own ``run_flow_in_subprocess`` does (same
environment, settings, signal handling and control channel; this module's
:func:`run_flow_in_forkserver` is that function with the start method changed), so each run keeps
its own process: its own state, logs, artifacts, retries, and a crash that ends only it (the
runner sees the exit code and marks that run Crashed). The runner process itself never forks: it
runs threads and an event loop, which a fork would copy half-way.

The other ways measured or read, and why not them:

- Running flow runs inside the runner (``run_flow`` in a thread, or Prefect's task workers,
  ``prefect.task_worker.serve``, which run *tasks* in threads of one process): no process start
  at all, but one run that segfaults, runs out of memory or calls ``os._exit`` takes every other
  run with it, and task workers give up the flow run (its state, retries, concurrency limit).
  Prefect 3.8's ``Runner`` has no in-process mode: each of its starters starts a process.
- Pre-warming a spawned interpreter (compiled bytecode, lazy imports): the bytecode is already
  compiled in the virtual environment; the seconds are spent executing the modules, which a new
  interpreter must do again. Lazy imports only move that time into the run.

Prefect's own part of event -> run latency, within its documented settings: the runner asks for
scheduled runs every ``PREFECT_RUNNER_POLL_FREQUENCY`` seconds (an integer, default 10; the stack
sets 1, see ``tooling/stack.py``); the forkserver is started when the runner starts, so the first
run after ``lakeloop up`` is warm too.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from prefect.context import SettingsContext, get_settings_context, serialize_context
from prefect.engine import handle_engine_signals
from prefect.flow_engine import (
    _CONTROL_CHANNEL_ENV_KEYS,
    _run_serialized_call_with_control_bootstrap,
    _runtime_subprocess_env,
    run_flow,
)
from prefect.runner import _starter_direct
from prefect.settings.context import get_current_settings
from prefect.settings.models.root import Settings
from prefect.utilities.callables import cloudpickle_wrapped_call
from prefect.utilities.processutils import sanitize_subprocess_env

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.flows import Flow

PRELOADED = (
    "deployments.serve",  # every flow: Prefect, MLflow, XGBoost, pandas, Evidently, lakeFS
    "great_expectations",  # imported by the first validation of a run (2-3 s)
    "mlflow.sklearn",  # imported when a run logs or loads a model
)
"""What the warm parent imports once, before it forks any run."""


@contextmanager
def forked_flow_runs(preload: Iterable[str] = PRELOADED) -> Iterator[None]:
    """Within the block, flow runs that ``serve()`` starts are forked from a warm parent that has
    imported ``preload`` (started now, so the first run is warm too) instead of spawned."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    multiprocessing.forkserver.ensure_running()
    # Prefect's direct starter calls this module-level function for each flow run of a served
    # flow; Prefect marks it as the place to override (prefect/runner/_starter_direct.py).
    spawning = _starter_direct.run_flow_in_subprocess
    _starter_direct.run_flow_in_subprocess = run_flow_in_forkserver  # type: ignore[assignment]
    try:
        yield
    finally:
        _starter_direct.run_flow_in_subprocess = spawning


def run_flow_in_forkserver(
    flow: Flow[..., Any],
    *,
    flow_run: FlowRun | None = None,
    parameters: dict[str, Any] | None = None,
    wait_for: Any = None,
    context: dict[str, Any] | None = None,
    env: dict[str, str | None] | None = None,
) -> multiprocessing.context.ForkServerProcess:
    """Prefect's ``run_flow_in_subprocess`` (prefect 3.8.8, ``prefect/flow_engine.py``), the
    process forked by the forkserver instead of spawned: same environment, settings context,
    engine signal handling and control-channel start-up. Prefect's direct starter calls it with
    the flow and keyword arguments."""
    merged_env: dict[str, str | None] = {
        **get_current_settings().to_environment_variables(exclude_unset=True),
        **os.environ,
        "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
        **(env or {}),
    }
    sanitized_env = sanitize_subprocess_env(merged_env)
    startup_env = {
        key: value for key, value in sanitized_env.items() if key in _CONTROL_CHANNEL_ENV_KEYS
    }
    wrapped_call = cloudpickle_wrapped_call(
        _run_flow_with_env,
        env=_runtime_subprocess_env(sanitized_env),
        remove_env={key for key, value in merged_env.items() if value is None},
        flow=flow,
        flow_run=flow_run,
        parameters=parameters,
        wait_for=wait_for,
        context=context or serialize_context(),
    )
    payload = cast("partial[bytes]", wrapped_call).args[0]
    process = multiprocessing.get_context("forkserver").Process(
        target=_run_serialized_call_with_control_bootstrap, args=(payload, startup_env)
    )
    process.start()
    return process


def _run_flow_with_env(
    *args: Any,
    env: dict[str, str],
    remove_env: set[str],
    **kwargs: Any,
) -> None:
    """In the child: this run's environment and a settings object read from it, then the run
    (as ``run_flow_with_env`` inside Prefect's ``run_flow_in_subprocess``)."""
    for key in remove_env:
        os.environ.pop(key, None)
    os.environ.update(env)
    settings_context = get_settings_context()
    flow_run = kwargs.get("flow_run")
    with (
        SettingsContext(profile=settings_context.profile, settings=Settings()),
        handle_engine_signals(getattr(flow_run, "id", None)),
    ):
        outcome = run_flow(*args, **kwargs)
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
