"""The training flow's own memory when a Dask cluster trains the commit, against training in
process (``python -m benchmarks.cluster_training [--rows N] [--tables K]``).

A commit of ``N`` synthetic sales in ``K`` Parquet tables is made on the lakeFS-compatible local
server (a process of its own, as is the MLflow server); then the training pipeline
(``pipelines.train.train_commit``, without Prefect) trains it in a fresh interpreter, the flow's
process, twice: in process, and with ``LAKELOOP_TRAINING__DASK_SCHEDULER`` set to a two-worker
``LocalCluster`` (its scheduler in this process, its workers processes of their own), whose
workers read the tables from lakeFS themselves. Prints the flow process's peak resident memory
(``ru_maxrss``), the workers' (``VmHWM``, summed) and the time; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def flow(state_dir: str, commit_id: str, scheduler: str | None) -> dict[str, float]:
    """In the flow's process: train the commit; its peak memory and time."""
    from lakeloop.dataset import load_spec  # noqa: PLC0415 - the child's own imports count
    from lakeloop.settings import load_settings  # noqa: PLC0415
    from pipelines import train  # noqa: PLC0415

    training = {"dask_scheduler": scheduler} if scheduler else {}
    settings = load_settings(
        state_dir=Path(state_dir), api={"verify_deploy": False}, training=training
    )
    started = time.perf_counter()
    result = train.train_commit(
        settings, load_spec(), settings.lakefs.repository, commit_id, again=True
    )
    return {
        "seconds": time.perf_counter() - started,
        "flow_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mae": float(result["metrics"]["mae"]),
    }


def _in_child(state_dir: Path, commit_id: str, scheduler: str | None) -> dict[str, float]:
    code = (
        "import json, sys; from benchmarks.cluster_training import flow; "
        "print('RESULT ' + json.dumps(flow(*sys.argv[1:3], sys.argv[3] or None)))"
    )
    finished = subprocess.run(
        [sys.executable, "-c", code, str(state_dir), commit_id, scheduler or ""],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in finished.stdout.splitlines() if line.startswith("RESULT "))
    measured: dict[str, float] = json.loads(line.removeprefix("RESULT "))
    return measured


def _peak_mb_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def measure(rows: int, tables: int) -> dict[str, dict[str, float]]:
    """Both ways on one commit of ``rows`` rows in ``tables`` tables."""
    import lakefs  # noqa: PLC0415
    from distributed import Client  # noqa: PLC0415

    from benchmarks.training import local_cluster  # noqa: PLC0415
    from lakeloop import lakefs_client  # noqa: PLC0415
    from lakeloop.settings import load_settings  # noqa: PLC0415
    from tooling import market  # noqa: PLC0415
    from tooling.stack import Stack, services  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-cluster-") as scratch:
        state_dir = Path(scratch) / "state"
        for variable in ("LAKEFS", "MLFLOW"):
            os.environ[f"LAKELOOP_{variable}__PORT"] = str(_free_port())
        settings = load_settings(state_dir=state_dir, api={"verify_deploy": False})
        stack = Stack(settings)
        try:
            for service in services(settings):
                if service.name in {"lakefs", "mlflow"}:
                    stack.wait(stack.start(service))
            client = lakefs_client.connect(settings)
            lakefs_client.ensure_repository(client, settings)
            branch = lakefs.Repository(settings.lakefs.repository, client=client).branch(
                settings.lakefs.branch
            )
            for table in range(tables):
                buffer = io.BytesIO()
                market.generate_batch(rows=rows // tables, seed=table).to_parquet(buffer)
                branch.object(f"{settings.lakefs.data_prefix}{table:03d}/sales.parquet").upload(
                    data=buffer.getvalue(), mode="wb"
                )
            commit_id = str(branch.commit(message="benchmark").get_commit().id)
            results = {"in process": _in_child(state_dir, commit_id, None)}
            with (
                local_cluster() as cluster,
                Client(cluster, set_as_default=False) as dask,
            ):
                on_dask = _in_child(state_dir, commit_id, cluster.scheduler_address)
                pids = dask.run(os.getpid).values()
                on_dask["workers_peak_mb"] = sum(_peak_mb_of(pid) for pid in pids)
            results["on Dask"] = on_dask
            return results
        finally:
            stack.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--tables", type=int, default=10)
    arguments = parser.parse_args()
    results = measure(arguments.rows, arguments.tables)
    print(f"{arguments.rows:,} rows in {arguments.tables} tables, one commit")
    print(f"{'engine':<12}{'flow peak MB':>14}{'workers peak MB':>17}{'seconds':>9}{'MAE':>10}")
    for engine, measured in results.items():
        workers: Any = measured.get("workers_peak_mb")
        print(
            f"{engine:<12}{measured['flow_peak_mb']:>14.0f}"
            f"{'-' if workers is None else f'{workers:.0f}':>17}"
            f"{measured['seconds']:>9.1f}{measured['mae']:>10.0f}"
        )


if __name__ == "__main__":
    main()
