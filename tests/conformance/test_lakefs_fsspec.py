"""What a Dask worker relies on to read a commit's table (lakeloop/cluster.py): lakefs-spec's
``open`` asks ``HEAD /repositories/{repository}/refs/{ref}/objects?path=`` whether the object
exists (lakeFS's ``headObject``), then reads it with the SDK's reader (``GET .../objects`` with
a Range header, after ``GET /repositories/{repository}`` and ``GET /config`` for the storage
configuration). lakeFS answers ``headObject`` with 200 and the object's ``Content-Length``,
``ETag``, ``Last-Modified`` and ``Content-Type`` (pkg/api/controller.go, HeadObject), 404 when
there is none (api/swagger.yml)."""

from __future__ import annotations

import httpx
import lakefs
import pytest
from lakefs_spec import LakeFSFileSystem

from tests.conformance.conftest import LakeFSTarget

TABLE = b"price,rooms\n100000,3\n250000,5\n"


def _committed(repo: lakefs.Repository) -> str:
    main = repo.branch("main")
    main.object("data/batch/sales.csv").upload(data=TABLE, mode="wb", content_type="text/csv")
    return main.commit(message="one table").id


def test_head_object_answers_the_objects_headers(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository
) -> None:
    commit_id = _committed(repo)
    url = f"{lakefs_target.endpoint}/api/v1/repositories/{repo.id}/refs/{commit_id}/objects"
    auth = (lakefs_target.key_id, lakefs_target.secret)
    found = httpx.head(url, params={"path": "data/batch/sales.csv"}, auth=auth, timeout=30)
    assert found.status_code == 200
    assert int(found.headers["content-length"]) == len(TABLE)
    stat = repo.ref(commit_id).object("data/batch/sales.csv").stat()
    assert found.headers["etag"].strip('"') == stat.checksum
    assert found.headers["content-type"].startswith("text/csv")
    assert found.headers["last-modified"]
    missing = httpx.head(url, params={"path": "data/batch/none.csv"}, auth=auth, timeout=30)
    assert missing.status_code == 404


def test_a_table_reads_through_lakefs_spec_at_a_commit(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository
) -> None:
    commit_id = _committed(repo)
    # A file system of its own: lakefs-spec caches instances by their arguments.
    filesystem = LakeFSFileSystem(
        host=lakefs_target.endpoint,
        username=lakefs_target.key_id,
        password=lakefs_target.secret,
        skip_instance_cache=True,
    )
    with filesystem.open(f"{repo.id}/{commit_id}/data/batch/sales.csv", "rb") as handle:
        assert handle.read() == TABLE
    with pytest.raises(FileNotFoundError):
        filesystem.open(f"{repo.id}/{commit_id}/data/batch/none.csv", "rb")
    wrong = LakeFSFileSystem(
        host=lakefs_target.endpoint,
        username=lakefs_target.key_id,
        password="wrong-secret-0000",
        skip_instance_cache=True,
    )
    with pytest.raises(PermissionError):
        wrong.open(f"{repo.id}/{commit_id}/data/batch/sales.csv", "rb")
