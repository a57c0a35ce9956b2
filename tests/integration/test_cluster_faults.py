"""Bad input to a training on a Dask cluster, for real (a ``distributed.LocalCluster`` of worker
processes, the built-in lakeFS server, an MLflow server): workers that cannot reach lakeFS, a
table no worker can read, a cluster with no worker, no scheduler at all. Each fails the run
with a message naming the table or the address, registers nothing, and leaves the champion
where it was; the lakeFS secret the workers were sent appears in no message and no log."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import lakefs
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from mlflow.tracking import MlflowClient

from lakeloop import cluster, lakefs_client, registry
from lakeloop.dataset import DatasetSpec
from lakeloop.settings import Settings
from pipelines import train
from tests.utils.dask_cluster import local_cluster
from tests.utils.local_lakefs import local_repository
from tests.utils.mlflow_server import mlflow_server
from tests.utils.net import free_port
from tooling import market

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Lake:
    settings: Settings
    """With the cluster's scheduler set."""
    client: lakefs.Client
    secret: str
    scheduler: str
    champion_commit: str


def _commit(client: lakefs.Client, settings: Settings, tables: dict[str, bytes]) -> str:
    branch = lakefs.Repository(settings.lakefs.repository, client=client).branch(
        settings.lakefs.branch
    )
    for name, content in tables.items():
        branch.object(f"{settings.lakefs.data_prefix}{name}").upload(data=content, mode="wb")
    return str(branch.commit(message=f"{len(tables)} tables").get_commit().id)


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _batches(seed: int) -> dict[str, bytes]:
    return {
        f"{seed}-{part}/sales.parquet": _parquet(market.generate_batch(rows=1500, seed=seed + part))
        for part in range(2)
    }


@pytest.fixture(scope="module", name="local_cluster")
def running_cluster() -> Iterator[LocalCluster]:
    with local_cluster() as running:
        yield running


@pytest.fixture(scope="module")
def lake(
    tmp_path_factory: pytest.TempPathFactory, spec: DatasetSpec, local_cluster: LocalCluster
) -> Iterator[Lake]:
    """A champion trained on the cluster from a commit of two tables."""
    secret = f"secret-{uuid.uuid4().hex}"
    with local_repository(tmp_path_factory.mktemp("faults"), secret=secret) as (on_lake, client):
        settings = on_lake.model_copy(
            update={
                "mlflow": on_lake.mlflow.model_copy(update={"port": free_port()}),
                "api": on_lake.api.model_copy(update={"verify_deploy": False}),
                "training": on_lake.training.model_copy(
                    update={
                        "dask_scheduler": local_cluster.scheduler_address,
                        "dask_worker_timeout_seconds": 5.0,
                        "max_mae": 90_000,
                        "max_rmse": 120_000,
                    }
                ),
            }
        )
        with mlflow_server(settings):
            commit_id = _commit(client, settings, _batches(60))
            result = train.train_commit(settings, spec, settings.lakefs.repository, commit_id)
            assert result["status"] == "promoted"
            yield Lake(settings, client, secret, local_cluster.scheduler_address, commit_id)


def _versions(settings: Settings) -> tuple[str | None, int]:
    """The champion's version and how many versions are registered."""
    champion = registry.champion(registry.connect(settings), settings)
    found = MlflowClient(settings.mlflow_tracking_uri).search_model_versions(
        f"name = '{settings.mlflow.model_name}'"
    )
    return (None if champion is None else str(champion.version)), len(found)


def _with_training(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"training": settings.training.model_copy(update=changes)})


def _worker_logs(scheduler: str) -> str:
    with Client(scheduler, set_as_default=False) as client:
        logs = client.get_worker_logs()
    return "\n".join(line for lines in logs.values() for _, line in lines)


@pytest.mark.parametrize("commit", ["new", "trained"], ids=["checking", "reading to train"])
def test_workers_that_cannot_reach_lakefs_fail_the_run_naming_the_address_and_the_table(
    lake: Lake, spec: DatasetSpec, commit: str
) -> None:
    """On a new commit the workers fail checking its tables; on a commit whose verdict is kept,
    reading them to train. The flow process itself reaches lakeFS (it lists the commit)."""
    before = _versions(lake.settings)
    closed = f"http://127.0.0.1:{free_port()}"
    settings = _with_training(lake.settings, dask_lakefs_endpoint=closed)
    commit_id = (
        _commit(lake.client, settings, _batches(70)) if commit == "new" else (lake.champion_commit)
    )
    with pytest.raises(cluster.LakeFSUnreachableError) as failed:
        train.train_commit(settings, spec, settings.lakefs.repository, commit_id, again=True)
    message = str(failed.value)
    assert f"cannot reach lakeFS at {closed}" in message
    assert f"{settings.lakefs.data_prefix}" in message
    assert "sales.parquet" in message
    assert "LAKELOOP_TRAINING__DASK_LAKEFS_ENDPOINT" in message
    assert _versions(lake.settings) == before
    assert lake.secret not in message
    assert lake.secret not in _worker_logs(lake.scheduler)


def test_a_table_no_worker_can_read_refuses_the_data_naming_it(
    lake: Lake, spec: DatasetSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table whose bytes are not Parquet: the workers' check says so (the flow process parses
    no table: it would fail here), the data is refused naming the table, the champion stays."""

    def not_here(content: bytes, *, path: str, ref: str) -> pd.DataFrame:
        raise AssertionError(f"the flow process parsed {path}")

    monkeypatch.setattr(lakefs_client, "parse_table", not_here)
    before = _versions(lake.settings)
    broken = f"{lake.settings.lakefs.data_prefix}80-broken/sales.parquet"
    commit_id = _commit(
        lake.client, lake.settings, {**_batches(80), "80-broken/sales.parquet": b"not parquet"}
    )
    with pytest.raises(ValueError, match="failed the checks") as failed:
        train.train_commit(lake.settings, spec, lake.settings.lakefs.repository, commit_id)
    assert f"cannot read {broken}" in str(failed.value)
    champion, count = _versions(lake.settings)
    assert champion == before[0]
    assert count == before[1]  # the refusal is an MLflow run, not a version


def test_a_cluster_without_workers_fails_the_run_naming_its_address(
    lake: Lake, spec: DatasetSpec
) -> None:
    before = _versions(lake.settings)
    with local_cluster(workers=0) as empty:
        settings = _with_training(
            lake.settings, dask_scheduler=empty.scheduler_address, dask_worker_timeout_seconds=2.0
        )
        with pytest.raises(cluster.ClusterError) as failed:
            train.train_commit(
                settings, spec, settings.lakefs.repository, lake.champion_commit, again=True
            )
    assert f"the Dask cluster at {empty.scheduler_address} has no worker" in str(failed.value)
    assert _versions(lake.settings) == before


def test_no_scheduler_at_the_address_fails_the_run_naming_it(lake: Lake, spec: DatasetSpec) -> None:
    before = _versions(lake.settings)
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    settings = _with_training(
        lake.settings, dask_scheduler=nowhere, dask_worker_timeout_seconds=2.0
    )
    with pytest.raises(cluster.ClusterError, match=f"no Dask scheduler answers at {nowhere}"):
        train.train_commit(
            settings, spec, settings.lakefs.repository, lake.champion_commit, again=True
        )
    assert _versions(lake.settings) == before
