"""A real Dask cluster for tests: a ``distributed.LocalCluster`` on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from distributed import LocalCluster


@contextmanager
def local_cluster(workers: int = 2) -> Iterator[LocalCluster]:
    """``workers`` single-threaded worker processes on loopback: data crosses processes, as on a
    real cluster; no dashboard."""
    with LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as running:
        yield running
