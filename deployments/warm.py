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
the code imported when the flow server started (``lakeloop down`` then ``up``, or a restart of the
``flows`` service, picks up an edit; ``serve()`` read the flow's file again for every run).

How. Python's ``forkserver`` start method is the warm parent: a single-threaded process, started
once beside the runner, that imports :data:`PRELOADED` and then forks one child per flow run.
The child runs the flow run through Prefect's own ``run_flow_in_subprocess`` (same environment,
settings, signal handling and control channel: only the ``spawn`` context it asks
``multiprocessing`` for is the forkserver instead, see :func:`forked_flow_runs`), so each run keeps
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
sets 1, see ``tooling/stack.py``).

The first run after ``lakeloop up`` is warm too: the flow server starts the warm parent first,
then waits for Prefect (both start together with the other servers), and registers the
deployments, which is what ``up`` waits for, only once the warm parent has finished importing
(:func:`wait_until_warm`). When the flow server registered at once, the first commit after
``up`` waited for those imports: merge -> run Pending 12 s in ``make demo``, against under 1 s
for a commit 30 s later.
"""

from __future__ import annotations

import copyreg
import importlib
import multiprocessing
import multiprocessing.forkserver
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from prefect import Flow, flow_engine

PRELOADED = (
    "deployments.serve",  # every flow's declaration: Prefect, lakeloop's settings and events
    # The pipelines the flows import when they run (flows/__init__.py): MLflow, XGBoost, pandas,
    # Evidently, the lakeFS SDK.
    "pipelines.train",
    "pipelines.retrain",
    "pipelines.monitor",
    "pipelines.reconcile",
    "great_expectations",  # imported by the first validation of a run (2-3 s)
    "mlflow.sklearn",  # imported when a run logs or loads a model
    # What a run's first model logging imported on top of those (437 modules: skops and the
    # sklearn, dask and pytest modules it audits types with; GitPython for the source version;
    # MLflow's pyfunc and its serving input): its first `log_trained` 1.88 s -> 1.13 s, against
    # 0.48 s for a second one in the same process (measured with a real MLflow server, 10,000
    # rows). A module that cannot be imported is skipped by the forkserver.
    "skops.io",
    "git",
    "mlflow.pyfunc.scoring_server",
    "mlflow.types.responses",
    # Last: the caches a run's first call would fill in its own process (see the module).
    "deployments.warm_caches",
)
"""What the warm parent imports once, before it forks any run."""


@contextmanager
def forked_flow_runs(preload: Iterable[str] = PRELOADED) -> Iterator[None]:
    """Within the block, flow runs that ``serve()`` starts are forked from a warm parent that has
    imported ``preload`` (started now, so the first run is warm too) instead of spawned."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    multiprocessing.forkserver.ensure_running()
    # Prefect's direct starter runs each flow run of a served flow with flow_engine's
    # run_flow_in_subprocess (environment, settings, engine signal handling, control channel),
    # which starts it in multiprocessing's "spawn" context: that context alone becomes the warm
    # forkserver, and everything else Prefect does for the run stays Prefect's own code.
    spawning = flow_engine.multiprocessing
    flow_engine.multiprocessing = _ForkServerMultiprocessing()  # type: ignore[assignment]
    copyreg.pickle(Flow, flow_by_reference)
    try:
        yield
    finally:
        flow_engine.multiprocessing = spawning
        copyreg.dispatch_table.pop(Flow, None)


def wait_until_warm() -> None:
    """Return once the warm parent has imported its preload: it forks nothing before, so a
    child that does nothing starts, and ends, only then."""
    child = multiprocessing.get_context("forkserver").Process(target=_nothing, name="warm-check")
    child.start()
    child.join()


def _nothing() -> None:
    """The child :func:`wait_until_warm` forks."""


def flow_by_reference(flow: Flow[..., Any]) -> tuple[Any, ...]:
    """How a flow travels to its run's process: by the module attribute it is, which the warm
    parent has imported. Pickled by value (cloudpickle's way for a function its module does not
    hold under its own name, and a flow's module holds the flow, not the function), a function
    keeps only the globals its code reads: annotations postponed by ``from __future__ import
    annotations`` (``datetime``, a ``Literal`` alias) then name nothing, and Prefect's parameter
    validation fails ("`Retrain_On_DriftModel` is not fully defined")."""
    module, name = flow.fn.__module__, flow.fn.__qualname__
    if getattr(sys.modules.get(module), name, None) is flow:
        return (imported_flow, (module, name))
    return cast("tuple[Any, ...]", object.__reduce_ex__(flow, 4))


def imported_flow(module: str, name: str) -> Flow[..., Any]:
    """The flow ``name`` of ``module`` (already imported in a forked run)."""
    found: Flow[..., Any] = getattr(importlib.import_module(module), name)
    return found


class _ForkServerMultiprocessing:
    """``multiprocessing`` as Prefect's ``flow_engine`` module sees it within
    :func:`forked_flow_runs`: the same module, except that the ``spawn`` context its
    ``run_flow_in_subprocess`` asks for is the warm ``forkserver``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)

    @staticmethod
    def get_context(method: str | None = None) -> Any:
        return multiprocessing.get_context("forkserver" if method == "spawn" else method)
