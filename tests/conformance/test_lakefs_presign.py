"""The presigned path: what the SDK does when lakeFS runs on S3 (or MinIO).

There the storage config says ``pre_sign_support``, so the SDK uploads through the staging API
(an address and a presigned PUT URL, the bytes PUT to S3 by the client, then a link) and reads
through presigned GETs (GetObject answers 302 to S3). Targets: the local server with its S3
block store on moto's S3 server (a real S3-compatible server on loopback), and a real lakeFS
when ``LAKEFS_STORAGE_NAMESPACE`` is an ``s3://`` namespace (the presigned path only exists
there). Each test proves the path was taken (the SDK's staging and read calls, recorded) and
that the bytes are in S3 (fetched back through a presigned URL, and on moto listed under the
repository's namespace).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import lakefs
import lakefs_sdk
import pytest
from lakefs.exceptions import ObjectExistsException
from lakefs.models import ObjectInfo

from lakefs_local.blockstore import S3Settings
from lakefs_local.testing import LocalServerProcess, LocalServerThread, WebhookReceiver
from tests.conformance.conftest import LakeFSTarget
from tests.utils.s3 import CREDENTIALS, create_bucket, moto_server, object_keys

BUCKET = "lakeloop-presign"
NAMESPACE_SKIP = (
    "set LAKEFS_STORAGE_NAMESPACE to an s3:// namespace of the real lakeFS to test its "
    "presigned path (a lakeFS on local storage has none)"
)


@dataclass(frozen=True)
class PresignTarget:
    """A lakeFS on S3, and (for the local one) a way to list its bucket."""

    target: LakeFSTarget
    list_keys: Callable[[str], list[str]] | None  # prefix -> keys; None: bucket out of reach
    put_object: Callable[[str, bytes], None] | None  # key, bytes: write the bucket directly


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)  # what this test's boto3 signs with
        with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
            create_bucket(endpoint, BUCKET)
            yield endpoint


@pytest.fixture(scope="module")
def s3_server(
    tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str
) -> Iterator[LocalServerThread]:
    settings = S3Settings(
        endpoint=moto_endpoint,
        access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    server = LocalServerThread(tmp_path_factory.mktemp("lakefs-s3"), blockstore_s3=settings)
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def presign_target(lakefs_target: LakeFSTarget, request: pytest.FixtureRequest) -> PresignTarget:
    """The lakeFS on S3 under test: for the local target, the local server with its S3 block
    store on moto; a real lakeFS as configured, when its namespace is s3://."""
    if not lakefs_target.is_local:
        if not lakefs_target.storage_namespace.startswith("s3://"):
            pytest.skip(NAMESPACE_SKIP)
        return PresignTarget(lakefs_target, None, None)
    endpoint: str = request.getfixturevalue("moto_endpoint")
    server: LocalServerThread = request.getfixturevalue("s3_server")
    target = replace(
        lakefs_target,
        endpoint=server.url,
        key_id=server.key_id,
        secret=server.secret,
        storage_namespace=f"s3://{BUCKET}/conf",
    )

    def put_object(key: str, data: bytes) -> None:
        import boto3  # noqa: PLC0415 - as tests/utils/s3.py

        boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=BUCKET, Key=key, Body=data)

    return PresignTarget(target, lambda prefix: object_keys(endpoint, BUCKET, prefix), put_object)


@dataclass
class Seen:
    """The SDK calls that tell which path it took."""

    addresses: list[tuple[str, bool]] = field(default_factory=list)  # (path, presign)
    links: list[str] = field(default_factory=list)  # paths
    reads: list[bool | None] = field(default_factory=list)  # presign flag of each GetObject
    uploads: int = 0  # POST .../objects: the path NOT taken on S3


def _record_calls(client: lakefs.Client) -> Seen:
    """Wrap the SDK's staging and object calls on this client to record them."""
    seen = Seen()
    staging, objects = client.sdk_client.staging_api, client.sdk_client.objects_api
    get_address, link = staging.get_physical_address, staging.link_physical_address
    get_object, update_auth = objects.get_object_with_http_info, objects.api_client

    def get_address_spy(repository: str, branch: str, path: str, *args: Any, **kw: Any) -> Any:
        seen.addresses.append((path, bool(args[0] if args else kw.get("presign"))))
        return get_address(repository, branch, path, *args, **kw)

    def link_spy(repository: str, branch: str, path: str, *args: Any, **kw: Any) -> Any:
        seen.links.append(path)
        return link(repository, branch, path, *args, **kw)

    def get_object_spy(*args: Any, **kw: Any) -> Any:
        seen.reads.append(kw.get("presign"))
        return get_object(*args, **kw)

    staging.get_physical_address = get_address_spy
    staging.link_physical_address = link_spy
    objects.get_object_with_http_info = get_object_spy
    raw_auth = update_auth.update_params_for_auth

    def auth_spy(*args: Any, **kw: Any) -> Any:
        # (headers, queries, auth settings, resource path, method, body): every request, the
        # SDK's raw upload (POST .../objects) included, is signed here before it is sent.
        path, method = args[3], args[4]
        if method == "POST" and path.endswith("/objects"):
            seen.uploads += 1
        return raw_auth(*args, **kw)

    update_auth.update_params_for_auth = auth_spy
    return seen


@pytest.fixture
def repo(presign_target: PresignTarget) -> Iterator[lakefs.Repository]:
    """A fresh repository under the target's s3:// namespace, deleted after the test."""
    name = f"presign-{uuid.uuid4().hex[:12]}"
    namespace = f"{presign_target.target.storage_namespace.rstrip('/')}/{name}"
    client = presign_target.target.client()
    repository = lakefs.Repository(name, client=client).create(
        storage_namespace=namespace, default_branch="main"
    )
    yield repository
    repository.delete()


def _seen(repository: lakefs.Repository) -> Seen:
    return _record_calls(repository._client)  # the client its objects use


def _assert_in_bucket(presign: PresignTarget, stats: ObjectInfo, namespace: str) -> None:
    """The object's address is under the namespace's ``data/``; on moto, its key is in the
    bucket (listed by the S3 server itself)."""
    assert stats.physical_address.startswith(f"{namespace}/data/")
    if presign.list_keys is not None:
        key = stats.physical_address.removeprefix(f"s3://{BUCKET}/")
        assert key in presign.list_keys(key.rsplit("/", 1)[0])


def _fetch_presigned(stored: lakefs.StoredObject) -> bytes:
    """GET the object's presigned URL straight from S3."""
    stats = stored.stat(pre_sign=True)
    assert stats.physical_address.startswith("http")
    assert stats.physical_address_expiry is not None
    response = httpx.get(stats.physical_address, timeout=30)
    response.raise_for_status()
    return response.content


def test_a_namespace_is_claimed_once(
    presign_target: PresignTarget, repo: lakefs.Repository
) -> None:
    """Creating a repository writes ``_lakefs/dummy`` under its namespace; another repository
    on that namespace is refused (controller.go ensureStorageNamespace)."""
    namespace = repo.properties.storage_namespace
    if presign_target.list_keys is not None:
        marker = f"{namespace.removeprefix(f's3://{BUCKET}/')}/_lakefs/dummy"
        assert presign_target.list_keys(marker) == [marker]
    again = lakefs.Repository(f"again-{uuid.uuid4().hex[:12]}", client=repo._client)
    with pytest.raises(lakefs.exceptions.ServerException) as refused:
        again.create(storage_namespace=namespace, default_branch="main")
    assert refused.value.status_code == 400
    assert "storage namespace already in use" in str(refused.value)


def test_storage_config_says_s3_with_presign(presign_target: PresignTarget) -> None:
    config = presign_target.target.client().storage_config
    assert config.blockstore_type == "s3"
    assert config.pre_sign_support is True


def test_upload_goes_through_staging_and_lands_in_the_namespace(
    presign_target: PresignTarget, repo: lakefs.Repository
) -> None:
    seen = _seen(repo)
    data = b"id,price\n1,100\n2,250\n"
    branch = repo.branch("main")

    branch.object("tables/a.csv").upload(
        data=data, mode="wb", content_type="text/csv", metadata={"source": "test"}
    )

    assert seen.addresses == [("tables/a.csv", True)]
    assert seen.links == ["tables/a.csv"]
    assert seen.uploads == 0
    stats = branch.object("tables/a.csv").stat()
    assert stats.checksum == hashlib.md5(data).hexdigest()  # noqa: S324 - S3's single-part ETag
    assert (stats.size_bytes, stats.content_type, stats.metadata) == (
        len(data),
        "text/csv",
        {"source": "test"},
    )
    _assert_in_bucket(presign_target, stats, repo.properties.storage_namespace)
    assert _fetch_presigned(branch.object("tables/a.csv")) == data


def test_writer_commit_and_ranged_reads_at_the_commit(
    presign_target: PresignTarget, repo: lakefs.Repository
) -> None:
    seen = _seen(repo)
    branch = repo.branch("main")
    pieces = [bytes([n]) * 70_000 for n in range(1, 5)]
    with branch.object("blobs/big.bin").writer(mode="wb") as sink:
        for piece in pieces:
            sink.write(piece)
    data = b"".join(pieces)
    commit_id = branch.commit(message="big").get_commit().id
    branch.object("blobs/big.bin").upload(data=b"replaced", mode="wb")  # staged after

    at_commit = repo.ref(commit_id).object("blobs/big.bin")
    with at_commit.reader(mode="rb") as source:
        assert source.read() == data
    with at_commit.reader(mode="rb") as source:
        source.seek(69_998)
        assert source.read(4) == b"\x01\x01\x02\x02"
        source.seek(-3, os.SEEK_END)
        assert source.read() == b"\x04\x04\x04"
        assert source.read() == b""
    with branch.object("blobs/big.bin").reader(mode="r") as text:
        assert text.read() == "replaced"

    assert [path for path, presign in seen.addresses if presign] == ["blobs/big.bin"] * 2
    assert seen.reads
    assert all(seen.reads)  # every GetObject asked for a presigned redirect
    assert seen.uploads == 0
    stats = at_commit.stat()
    assert stats.checksum == hashlib.md5(data).hexdigest()  # noqa: S324
    _assert_in_bucket(presign_target, stats, repo.properties.storage_namespace)


def test_exclusive_upload_refuses_an_existing_path(repo: lakefs.Repository) -> None:
    branch = repo.branch("main")
    branch.object("once.txt").upload(data="first", mode="x")
    with pytest.raises(ObjectExistsException):
        branch.object("once.txt").upload(data="second", mode="x")
    with branch.object("once.txt").reader(mode="r") as text:
        assert text.read() == "first"


def test_ingest_flow_branch_commit_merge_list_read(
    presign_target: PresignTarget, repo: lakefs.Repository
) -> None:
    main = repo.branch("main")
    main.object("data/old.csv").upload(data=b"a\n1\n", mode="wb")
    main.object("data/gone.csv").upload(data=b"a\n0\n", mode="wb")
    main.commit(message="seed")
    ingest = repo.branch("ingest-batch").create(source_reference="main")
    seen = _seen(repo)
    batch = {f"data/batch/{n}.csv": f"a\n{n}\n".encode() for n in range(3)}
    for path, body in batch.items():
        ingest.object(path).upload(data=body, mode="wb", content_type="text/csv")
    ingest.object("data/gone.csv").delete()
    ingest.commit(message="ingest batch", metadata={"rows": "3"})
    assert {change.path for change in main.diff(ingest)} == {*batch, "data/gone.csv"}

    merge = ingest.merge_into(main, message="publish batch")

    listed = {
        o.path: o for o in repo.ref(merge).objects(prefix="data/") if isinstance(o, ObjectInfo)
    }
    assert sorted(listed) == sorted([*batch, "data/old.csv"])
    for path, body in batch.items():
        with repo.ref(merge).object(path).reader(mode="rb") as source:
            assert source.read() == body
        assert listed[path].checksum == hashlib.md5(body).hexdigest()  # noqa: S324
        _assert_in_bucket(presign_target, listed[path], repo.properties.storage_namespace)
    assert sorted(path for path, _ in seen.addresses) == sorted(batch)
    assert seen.uploads == 0


def test_server_side_upload_and_read_of_an_s3_repository_use_the_bucket(
    presign_target: PresignTarget, repo: lakefs.Repository
) -> None:
    """pre_sign=False: the bytes go through lakeFS, which still keeps them in S3."""
    seen = _seen(repo)
    branch = repo.branch("main")
    data = b"through the server"
    branch.object("server/side.txt").upload(data=data, mode="wb", pre_sign=False)
    with branch.object("server/side.txt").reader(mode="rb", pre_sign=False) as source:
        assert source.read() == data

    assert (seen.addresses, seen.uploads, seen.reads) == ([], 1, [False])
    stats = branch.object("server/side.txt").stat()
    assert stats.checksum == hashlib.md5(data).hexdigest()  # noqa: S324 - upload.WriteBlob
    assert "," not in stats.physical_address  # only addresses handed out to clients are signed
    _assert_in_bucket(presign_target, stats, repo.properties.storage_namespace)
    assert _fetch_presigned(branch.object("server/side.txt")) == data


def _location(address: str) -> lakefs_sdk.StagingLocation:
    return lakefs_sdk.StagingLocation(
        physical_address=address, presigned_url=None, presigned_url_expiry=None
    )


def _staging_metadata(
    location: lakefs_sdk.StagingLocation, *, checksum: str, size: int
) -> lakefs_sdk.StagingMetadata:
    return lakefs_sdk.StagingMetadata(
        staging=location, checksum=checksum, size_bytes=size, content_type=None, mtime=None
    )


A_ETAG = '"0cc175b9c0f1b6a831c399e269772661"'  # S3's ETag of b"a", quotes and all


def _link_error(repository: lakefs.Repository, path: str, address: str) -> tuple[int, str]:
    staging = repository._client.sdk_client.staging_api
    metadata = _staging_metadata(_location(address), checksum=A_ETAG, size=1)
    with pytest.raises(lakefs_sdk.ApiException) as refused:
        staging.link_physical_address(repository.id, "main", path, metadata)
    return refused.value.status, str(refused.value.body)


def test_link_refuses_an_address_not_handed_out_for_that_path(repo: lakefs.Repository) -> None:
    staging = repo._client.sdk_client.staging_api
    location = staging.get_physical_address(repo.id, "main", "meant/for.txt", presign=False)
    address = location.physical_address
    namespace = repo.properties.storage_namespace
    assert address.startswith(f"{namespace}/data/")
    assert location.presigned_url is None

    assert _link_error(repo, "another/path.txt", address)[0] == 400
    unsigned = address.rsplit(",", 1)[0]
    status, body = _link_error(repo, "meant/for.txt", unsigned)
    assert (status, "address is not signed" in body) == (400, True)
    # The address it was handed out for links (the bytes need not be there yet), quotes trimmed.
    linked = staging.link_physical_address(
        repo.id, "main", "meant/for.txt", _staging_metadata(location, checksum=A_ETAG, size=1)
    )
    assert (linked.checksum, linked.physical_address) == (
        "0cc175b9c0f1b6a831c399e269772661",
        address,
    )
    # Nothing was PUT there: reading through lakeFS answers block.ErrDataNotFound's 410.
    with (
        pytest.raises(lakefs.exceptions.ServerException) as missing,
        repo.branch("main").object("meant/for.txt").reader(mode="rb", pre_sign=False) as source,
    ):
        source.read()
    assert missing.value.status_code == 410


def test_link_of_a_full_address_outside_the_data_prefix(
    presign_target: PresignTarget, repo: lakefs.Repository
) -> None:
    """lakeFS links an s3:// address outside ``<namespace>/data/`` as it is, unsigned
    (controller.go normalizePhysicalAddress: a full address is not verified)."""
    if presign_target.put_object is None:
        pytest.skip("needs write access to the real lakeFS's bucket")
    key = f"elsewhere/{uuid.uuid4().hex}.txt"
    presign_target.put_object(key, b"brought in")
    staging = repo._client.sdk_client.staging_api
    location = _location(f"s3://{BUCKET}/{key}")
    metadata = _staging_metadata(location, checksum="etag", size=10)
    staging.link_physical_address(repo.id, "main", "linked.txt", metadata)
    with repo.branch("main").object("linked.txt").reader(mode="rb") as source:
        assert source.read() == b"brought in"


def test_hooks_read_action_files_kept_in_s3(
    presign_target: PresignTarget, repo: lakefs.Repository
) -> None:
    host = presign_target.target.webhook_host
    if host is None:
        pytest.skip("set LAKEFS_WEBHOOK_HOST to run webhook tests against the real lakeFS")
    receiver = WebhookReceiver(host)
    try:
        action = (
            "name: gate\non:\n  pre-commit:\n    branches: [ingest]\nhooks:\n"
            f"  - id: check\n    type: webhook\n    properties:\n      url: {receiver.url}/check\n"
        )
        main = repo.branch("main")
        main.object("_lakefs_actions/gate.yaml").upload(data=action, mode="w")
        main.commit(message="install gate")
        ingest = repo.branch("ingest").create(source_reference="main")
        ingest.object("data/batch.csv").upload(data=b"rows", mode="wb")
        ingest.commit(message="batch")
        assert [call["path"] for call in receiver.wait_for(1)] == ["/check"]
    finally:
        receiver.close()


def test_local_namespace_on_an_s3_server(s3_server: LocalServerThread) -> None:
    """A local:// repository on the S3-enabled local server keeps working through lakeFS's own
    routes (pre_sign=False: the storage config says presign for every repository, as a
    single-blockstore lakeFS does); the staging API refuses it as lakeFS refuses a namespace of
    another block store type."""
    client = lakefs.Client(host=s3_server.url, username=s3_server.key_id, password=s3_server.secret)
    name = f"local-{uuid.uuid4().hex[:12]}"
    repository = lakefs.Repository(name, client=client).create(
        storage_namespace=f"local://{name}", default_branch="main"
    )
    try:
        main = repository.branch("main")
        main.object("a.txt").upload(data=b"local bytes", mode="wb", pre_sign=False)
        with main.object("a.txt").reader(mode="rb") as source:  # presign asked, bytes served
            assert source.read() == b"local bytes"
        staging = client.sdk_client.staging_api
        with pytest.raises(lakefs_sdk.ApiException) as refused:
            staging.get_physical_address(name, "main", "b.txt", presign=True)
        assert refused.value.status == 400
    finally:
        repository.delete()


def test_a_bucket_out_of_reach_refuses_the_repository(s3_server: LocalServerThread) -> None:
    client = lakefs.Client(host=s3_server.url, username=s3_server.key_id, password=s3_server.secret)
    name = f"nobucket-{uuid.uuid4().hex[:12]}"
    with pytest.raises(lakefs.exceptions.ServerException) as refused:
        lakefs.Repository(name, client=client).create(
            storage_namespace=f"s3://no-such-bucket-{name}/x", default_branch="main"
        )
    assert refused.value.status_code == 400
    assert "failed to create repository: failed to access storage" in str(refused.value)


def test_the_server_process_takes_lakefs_s3_variables(moto_endpoint: str, tmp_path: Path) -> None:
    """``python -m lakefs_local`` with ``LAKEFS_BLOCKSTORE_S3_ENDPOINT`` (and AWS_* credentials,
    boto3's chain) serves s3:// repositories from the bucket."""
    env = {"LAKEFS_BLOCKSTORE_S3_ENDPOINT": moto_endpoint, **CREDENTIALS}
    server = LocalServerProcess(tmp_path / "data", extra_env=env).start()
    try:
        client = lakefs.Client(host=server.url, username=server.key_id, password=server.secret)
        assert client.storage_config.pre_sign_support is True
        name = f"process-{uuid.uuid4().hex[:12]}"
        repository = lakefs.Repository(name, client=client).create(
            storage_namespace=f"s3://{BUCKET}/{name}", default_branch="main"
        )
        repository.branch("main").object("a.txt").upload(data=b"from a process", mode="wb")
        assert len(object_keys(moto_endpoint, BUCKET, f"{name}/data/")) == 1
    finally:
        server.stop()


def test_default_local_server_offers_no_presign(lakefs_target: LakeFSTarget) -> None:
    """Without an S3 block store nothing changes: no presign in the config, no staging API."""
    if not lakefs_target.is_local:
        pytest.skip("the default local server only")
    client = lakefs_target.client()
    assert client.storage_config.pre_sign_support is False
    response = httpx.get(
        f"{lakefs_target.endpoint}/api/v1/repositories/any/branches/main/staging/backing",
        params={"path": "x"},
        auth=(lakefs_target.key_id, lakefs_target.secret),
    )
    assert response.status_code in {404, 405}
