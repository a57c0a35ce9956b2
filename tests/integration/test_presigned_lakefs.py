"""Write-audit-publish on a lakeFS that keeps its data in S3: the product as a pod runs it when
``LAKELOOP_LAKEFS__STORAGE_NAMESPACE=s3://...``, against the lakeFS-compatible server with its S3
block store on moto's S3 server (a real S3-compatible server on loopback).

There the storage config says ``pre_sign_support``, so the SDK under ``lakefs_client`` moves
every byte straight to and from S3 with presigned URLs: ``publish`` uploads the batch and the
action files through the staging API, the gateway's pre-merge checks read the batch through
presigned GETs, and ``read_tables`` reads it back the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lakefs
import pandas as pd
import pytest

from lakefs_local.blockstore import S3Settings
from lakeloop import lakefs_client
from lakeloop.ingest import inspect_source, write_parquet
from lakeloop.settings import Settings
from tests.utils.local_lakefs import gated_repository
from tests.utils.s3 import CREDENTIALS, create_bucket, moto_server, object_keys
from tooling import market

pytestmark = pytest.mark.integration

BUCKET = "lakeloop-lake"
NAMESPACE = f"s3://{BUCKET}/housing"
SECRET = "presign-webhook-secret-0123456789"
LAKEFS_SECRET = "presign-lakefs-secret-0123456789"


@dataclass(frozen=True)
class Lake:
    settings: Settings
    client: lakefs.Client
    endpoint: str  # moto's
    staged: list[str]  # paths the SDK asked a presigned upload address for


def _record_staging(client: lakefs.Client) -> list[str]:
    """The paths this client uploads through the staging API (the presigned path)."""
    staged: list[str] = []
    staging = client.sdk_client.staging_api
    get_address = staging.get_physical_address

    def spy(repository: str, branch: str, path: str, *args: Any, **kw: Any) -> Any:
        staged.append(path)
        return get_address(repository, branch, path, *args, **kw)

    staging.get_physical_address = spy
    return staged


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    root = tmp_path_factory.mktemp("presigned-wap")
    with pytest.MonkeyPatch.context() as patch, moto_server(root / "moto") as endpoint:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)  # the lakeFS server's S3 credentials, as a pod's secret
        create_bucket(endpoint, BUCKET)
        with gated_repository(
            root,
            webhook_secret=SECRET,
            lakefs_secret=LAKEFS_SECRET,
            storage_namespace=NAMESPACE,
            blockstore_s3=S3Settings(endpoint=endpoint),
            install_actions=False,
        ) as gated:
            staged = _record_staging(gated.client)
            lakefs_client.install_actions(gated.client, gated.settings)
            yield Lake(gated.settings, gated.client, endpoint, staged)


def test_actions_are_installed_through_s3(lake: Lake) -> None:
    installed = [path for path in lake.staged if path.startswith("_lakefs_actions/")]
    assert installed
    keys = object_keys(lake.endpoint, BUCKET, "housing/data/")
    repository = lakefs.Repository(lake.settings.lakefs.repository, client=lake.client)
    for path in installed:
        address = repository.branch(lake.settings.lakefs.branch).object(path).stat()
        assert address.physical_address.removeprefix(f"s3://{BUCKET}/") in keys


def test_publish_and_read_tables_through_presigned_urls(lake: Lake, tmp_path: Path) -> None:
    frame = market.generate_batch(rows=300, seed=7)
    table = inspect_source(write_parquet(frame, tmp_path / "batch.parquet"))
    before = len(lake.staged)

    published = lakefs_client.publish(
        lake.client, lake.settings, [table], name="presigned", source="test", dataset_version=1
    )

    assert published.merged, published.rejection  # the gate read the batch from S3 and passed it
    assert lake.staged[before:] == published.paths  # uploaded through the staging API
    assert published.commit_id is not None
    tables = lakefs_client.read_tables(
        lake.client,
        lake.settings,
        repository=lake.settings.lakefs.repository,
        ref=published.commit_id,
    )
    assert list(tables) == published.paths
    stored = tables[published.paths[0]]
    pd.testing.assert_frame_equal(stored.load(), frame)
    repository = lakefs.Repository(lake.settings.lakefs.repository, client=lake.client)
    stats = repository.ref(published.commit_id).object(published.paths[0]).stat()
    assert stats.physical_address.startswith(f"{NAMESPACE}/data/")
    assert stats.checksum == stored.checksum
    key = stats.physical_address.removeprefix(f"s3://{BUCKET}/")
    assert key in object_keys(lake.endpoint, BUCKET, "housing/data/")


def test_the_gate_reads_a_bad_batch_from_s3_and_blocks_it(lake: Lake, tmp_path: Path) -> None:
    """The pre-merge checks judged the bytes in S3: a batch they refuse stays off main."""
    bad = market.generate_batch(rows=300, seed=8)
    bad.loc[:59, "median_income"] = -1.0  # a fifth of the rows below the description's bound
    table = inspect_source(write_parquet(bad, tmp_path / "bad.parquet"))
    before = lakefs_client.head_commit(lake.client, lake.settings)

    published = lakefs_client.publish(
        lake.client, lake.settings, [table], name="bad", source="test", dataset_version=1
    )

    assert not published.merged
    assert "median_income" in published.rejection
    assert lakefs_client.head_commit(lake.client, lake.settings) == before
