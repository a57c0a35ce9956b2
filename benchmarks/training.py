"""Training time and peak memory by data size, in process and on a two-worker local Dask cluster
(``python -m benchmarks.training``).

Each (size, engine) pair runs in its own process, so peak memory belongs to that run alone. In
process, the peak is the process's ``ru_maxrss``. On Dask it is the client process's (which also
hosts the local scheduler) plus each worker process's ``VmHWM``: a sum of peaks, so an upper bound
on what was resident at once. The cluster's start-up is not timed: training targets an existing
cluster. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZES = (20_000, 200_000, 1_000_000)
ENGINES = ("process", "dask")
DASK_WORKERS = 2


def measure(rows: int, *, engine: str) -> dict[str, float]:
    """Generate ``rows`` synthetic sales, train with the default settings on ``engine``."""
    from lakeloop import market  # noqa: PLC0415 - imported in the measured child only

    frame = market.generate_batch(rows=rows, seed=1)
    if engine == "process":
        result = _train_timed(frame, scheduler=None)
        return result | {"peak_mb": _own_peak_mb()}
    from distributed import Client, LocalCluster  # noqa: PLC0415

    with (
        LocalCluster(
            n_workers=DASK_WORKERS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
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
        "rounds": float(trained.pipeline.named_steps["regress"].best_iteration + 1),
    }


def _own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb_of(pid: int) -> float:
    """A process's peak resident memory (VmHWM), read while it is still alive."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


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
    args = parser.parse_args()
    if args.rows:
        print(json.dumps(measure(args.rows, engine=args.engine)))
        return
    _print_header()
    for rows in args.sizes:
        _print_row(rows, _run_child(rows, engine="process"), _run_child(rows, engine="dask"))


if __name__ == "__main__":
    main()
