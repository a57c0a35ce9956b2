"""Training time and peak memory by data size, in process and on a two-worker local Dask cluster
(``python -m benchmarks.training``), and where the training flow's time goes for one commit
(``python -m benchmarks.training --steps``).

Each (size, engine) pair runs in its own process, so peak memory belongs to that run alone. In
process, the peak is the process's ``ru_maxrss``. On Dask it is the client process's (which also
hosts the local scheduler) plus each worker process's ``VmHWM``: a sum of peaks, so an upper bound
on what was resident at once. The cluster's start-up is not timed: training targets an existing
cluster. Prints a table; asserts nothing.

``--steps`` runs the training flow's own pipeline (without Prefect: its trigger and process start
are not in these figures) in a fresh interpreter against the lakeFS-compatible local server and an
MLflow server, both started as processes on loopback, with the gateway and the lakeFS actions
installed, so each merge is judged by the pre-merge hook as in the stack. A first commit makes the
champion; the second, timed, commit is what every later training does: its model is scored
against that champion. ``log and register`` is broken down by wrapping the calls it makes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

if TYPE_CHECKING:
    from distributed import LocalCluster

SIZES = (20_000, 200_000, 1_000_000)
ENGINES = ("process", "dask")
DASK_WORKERS = 2
STEP_ROWS = 20_000


def local_cluster() -> LocalCluster:
    """The benchmarks' Dask cluster on loopback: :data:`DASK_WORKERS` single-threaded worker
    processes of their own, no dashboard (a context manager)."""
    from distributed import LocalCluster  # noqa: PLC0415 - imported in the measured child only

    return LocalCluster(
        n_workers=DASK_WORKERS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )


def measure(rows: int, *, engine: str) -> dict[str, float]:
    """Generate ``rows`` synthetic sales, train with the default settings on ``engine``."""
    from tooling import market  # noqa: PLC0415 - imported in the measured child only

    frame = market.generate_batch(rows=rows, seed=1)
    if engine == "process":
        result = _train_timed(frame, scheduler=None)
        return result | {"peak_mb": _own_peak_mb()}
    from distributed import Client  # noqa: PLC0415

    with (
        local_cluster() as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        result = _train_timed(frame, scheduler=cluster.scheduler_address)
        worker_pids = client.run(os.getpid).values()
        workers_mb = sum(_peak_mb_of(pid) for pid in worker_pids)
    return result | {"peak_mb": _own_peak_mb() + workers_mb, "workers_mb": workers_mb}


def _train_timed(frame: Any, *, scheduler: str | None) -> dict[str, float]:
    """Train with the default hyperparameters (on ``scheduler`` when given); time and quality."""
    from lakeloop.dataset import load_spec  # noqa: PLC0415
    from lakeloop.model import train  # noqa: PLC0415
    from lakeloop.settings import TrainingSettings  # noqa: PLC0415

    spec = load_spec()
    started = time.perf_counter()
    trained = train(frame, spec, TrainingSettings(dask_scheduler=scheduler))
    return {
        "train_s": time.perf_counter() - started,
        "mae": trained.metrics["mae"],
        "rounds": float(trained.facts.rounds),
    }


def _own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb_of(pid: int) -> float:
    """A process's peak resident memory (VmHWM), read while it is still alive."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def flow_steps(rows: int) -> dict[str, float]:
    """Seconds per step of the training flow for a commit of ``rows`` new rows (see the module
    docstring); runs in a fresh interpreter so the import of the flow is counted as a flow run
    process would pay it."""
    started = time.perf_counter()
    # Timed: a flow run's process needs the flow and the pipeline it imports when it runs.
    from flows import train  # noqa: F401, PLC0415
    from pipelines import train as pipeline  # noqa: F401, PLC0415

    imported = time.perf_counter() - started
    from lakeloop import lakefs_client, registry  # noqa: PLC0415
    from lakeloop.dataset import load_spec  # noqa: PLC0415
    from lakeloop.ingest import inspect_source, write_parquet  # noqa: PLC0415
    from lakeloop.settings import load_settings  # noqa: PLC0415
    from tooling import market  # noqa: PLC0415
    from tooling.stack import Stack, services  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-train-") as scratch:
        folder = Path(scratch)
        # The servers started as children read where the others are from the environment.
        for variable in ("LAKEFS", "MLFLOW", "GATEWAY"):
            os.environ[f"LAKELOOP_{variable}__PORT"] = str(_free_port())
        settings = load_settings(state_dir=folder / "state", api={"verify_deploy": False})
        stack = Stack(settings)
        try:
            for service in services(settings):
                if service.name in {"lakefs", "mlflow", "gateway"}:
                    stack.wait(stack.start(service))
            lakefs = lakefs_client.connect(settings)
            lakefs_client.ensure_repository(lakefs, settings)
            lakefs_client.install_actions(lakefs, settings)  # the pre-merge hook judges merges
            commits: list[str | None] = [
                lakefs_client.publish(
                    lakefs,
                    settings,
                    [inspect_source(write_parquet(batch, folder / f"batch-{seed}.parquet"))],
                    name=f"bench-{seed}",
                    source="benchmark",
                    dataset_version=1,
                ).commit_id
                for seed in (1, 2)
                for batch in [market.generate_batch(rows=rows, seed=seed)]
            ]
            champion_commit, timed_commit = commits
            if champion_commit is None or timed_commit is None:
                raise RuntimeError("lakeFS refused to merge a benchmark batch")
            spec = load_spec(settings.dataset)
            _train_commit(settings, spec, champion_commit, timings={})
            timings = {"import the flow module": imported}
            with _log_and_register_breakdown(registry, timings):
                _train_commit(settings, spec, timed_commit, timings=timings)
        finally:
            stack.down()
    return timings


# The training pipeline's steps, by the name each is printed under.
_STEP_LABELS = {
    "already_trained": "already trained?",
    "read_commit": "read the commit",
    "ingested_under": "descriptions",
    "validate": "validate (GX)",
    "training_frame": "training frame",
    "fit": "fit",
    "log_and_register": "log and register",
    "score_champion": "score the champion",
    "gate_and_promote": "gate and promote",
    "record_reports": "reports, after the decision",
}


def _train_commit(settings: Any, spec: Any, commit_id: str, *, timings: dict[str, float]) -> None:
    """The training pipeline on one commit (what the flow runs), each step timed."""
    from pipelines.runtime import Runtime  # noqa: PLC0415
    from pipelines.train import train_commit  # noqa: PLC0415

    class Timed(Runtime):
        def step(self, fn: Any) -> Any:
            return _timed(fn, _STEP_LABELS.get(fn.__name__, fn.__name__), timings)

    train_commit(settings, spec, settings.lakefs.repository, commit_id, runtime=Timed())


# What ``log and register`` calls, timed by wrapping each where the registry module looks it up.
_LOGGING_PARTS = (
    ("evaluation.segment_metrics", "  segment metrics"),
    ("from_pandas", "  dataset input: digest + profile"),
    ("mlflow.log_input", "  dataset input: log"),
    ("infer_signature", "  model signature"),
    ("mlflow.sklearn.log_model", "  log the model"),
    ("register", "  register the version"),
    ("abandon_incomplete", "  close earlier attempts"),
)


@contextlib.contextmanager
def _log_and_register_breakdown(registry: Any, timings: dict[str, float]) -> Iterator[None]:
    """Time the parts of ``log and register``; what they leave is the run's own requests."""
    with contextlib.ExitStack() as patches:
        for dotted, label in _LOGGING_PARTS:
            *path, name = dotted.split(".")
            owner = registry
            for part in path:
                owner = getattr(owner, part)
            timed = _timed(getattr(owner, name), label, timings)
            patches.enter_context(mock.patch.object(owner, name, timed))
        yield
    parts = sum(timings.get(label, 0.0) for _, label in _LOGGING_PARTS)
    timings["  run start, params, metrics, tags, end"] = timings["log and register"] - parts


def _timed(function: Callable[..., Any], label: str, into: dict[str, float]) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            into[label] = into.get(label, 0.0) + time.perf_counter() - started

    return timed


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _print_steps(rows: int, timings: dict[str, float]) -> None:
    print(f"training flow steps for a commit of {rows:,} rows (seconds, without Prefect):")
    order = [
        "import the flow module",
        "already trained?",
        "read the commit",
        "descriptions",
        "validate (GX)",
        "training frame",
        "fit",
        "log and register",
        *(label for _, label in _LOGGING_PARTS),
        "  run start, params, metrics, tags, end",
        "score the champion",
        "gate and promote",
        "reports, after the decision",
    ]
    for name in order:
        print(f"  {name:<42} {timings.get(name, 0.0):>6.2f}")
    steps = [name for name in order if not name.startswith("  ")]
    decided = sum(timings.get(name, 0.0) for name in steps[: steps.index("gate and promote") + 1])
    total = sum(timings.get(name, 0.0) for name in steps)
    print(f"  {'until the decision (promoted)':<42} {decided:>6.2f}")
    print(f"  {'total':<42} {total:>6.2f}", flush=True)


def _run_child(rows: int, *, engine: str) -> dict[str, float]:
    """Measure one (size, engine) pair in a fresh interpreter; its last stdout line is JSON."""
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.training", "--rows", str(rows), "--engine", engine],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def _print_header() -> None:
    print(
        f"{'':>10} | {'in process':^26} | {f'Dask, {DASK_WORKERS} workers x 1 thread':^37} | "
        f"{'Dask / process':^15}"
    )
    print(
        f"{'rows':>10} | {'train s':>7} {'peak MB':>8} {'MAE':>9} | "
        f"{'train s':>7} {'peak MB':>8} {'workers':>8} {'MAE':>9} | {'time':>6} {'memory':>7}"
    )


def _print_row(rows: int, local: dict[str, float], dask: dict[str, float]) -> None:
    print(
        f"{rows:>10,} | {local['train_s']:>7.1f} {local['peak_mb']:>8,.0f} {local['mae']:>9,.0f} | "
        f"{dask['train_s']:>7.1f} {dask['peak_mb']:>8,.0f} {dask['workers_mb']:>8,.0f} "
        f"{dask['mae']:>9,.0f} | {dask['train_s'] / local['train_s']:>5.2f}x "
        f"{dask['peak_mb'] / local['peak_mb']:>6.2f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, help="measure one size (used by the parent run)")
    parser.add_argument("--engine", choices=ENGINES, default="process")
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="row counts to run")
    parser.add_argument(
        "--steps", action="store_true", help=f"time the flow's steps on {STEP_ROWS:,} rows"
    )
    args = parser.parse_args()
    if args.steps:
        _print_steps(args.rows or STEP_ROWS, flow_steps(args.rows or STEP_ROWS))
        return
    if args.rows:
        print(json.dumps(measure(args.rows, engine=args.engine)))
        return
    _print_header()
    for rows in args.sizes:
        _print_row(rows, _run_child(rows, engine="process"), _run_child(rows, engine="dask"))


if __name__ == "__main__":
    main()
