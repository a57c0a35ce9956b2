"""The S3 block store's pure parts: lakeFS's address layout, link signatures, the settings read
from lakeFS's environment variables, and entries that stay what they were without S3."""

from __future__ import annotations

import re
import time

import pytest

from lakefs_local.__main__ import s3_settings
from lakefs_local.blockstore import (
    YEAR_4000,
    LinkAddressError,
    LinkSigner,
    PathProvider,
    S3Settings,
    _xid,
    content_disposition,
    split_address,
    xid_time,
)
from lakefs_local.store import BadRequestError, ObjectEntry

XID = r"[0-9a-v]{20}"


def test_new_paths_are_data_partition_id_with_a_descending_partition() -> None:
    paths = PathProvider()
    first, second = paths.new_path(), paths.new_path()
    assert re.fullmatch(rf"data/{XID}/{XID}", first)
    assert first != second
    assert first.split("/")[1] == second.split("/")[1]  # one partition per hour
    partition, name = first.split("/")[1:]
    assert abs(xid_time(name) - time.time()) < 5
    # Counts down from the year 4000, kept to xid's 32 bits as Go's uint32 conversion keeps it.
    assert abs(xid_time(partition) - (YEAR_4000 - time.time()) % 2**32) < 5


def test_xid_spelling_round_trips_and_refuses_other_text() -> None:
    assert _xid(0, bytes(8)) == "0" * 20
    assert xid_time(_xid(1_700_000_000, bytes(8))) == 1_700_000_000
    for bad in ("short", "w" * 20, "0" * 21):
        with pytest.raises(ValueError, match="invalid ID"):
            xid_time(bad)


@pytest.fixture
def signer() -> LinkSigner:
    return LinkSigner(b"test-key")


def _signed(signer: LinkSigner, address: str, path: str = "a/b.csv") -> str:
    return signer.sign(repository="repo", branch="main", path=path, address=address)


def test_a_signed_address_links_only_for_its_repository_branch_and_path(
    signer: LinkSigner,
) -> None:
    signed = _signed(signer, PathProvider().new_path())
    assert "/" not in signed.rsplit(",", 1)[1]  # URL-safe: the signature is part of an S3 key
    signer.verify(repository="repo", branch="main", path="a/b.csv", signed=signed)
    for repository, branch, path in [("other", "main", "a/b.csv"), ("repo", "dev", "a/b.csv")]:
        with pytest.raises(LinkAddressError, match="invalid address signature"):
            signer.verify(repository=repository, branch=branch, path=path, signed=signed)
    with pytest.raises(LinkAddressError, match="invalid address signature"):
        LinkSigner(b"another-key").verify(
            repository="repo", branch="main", path="a/b.csv", signed=signed
        )


def test_link_refusals_carry_lakefs_messages(signer: LinkSigner) -> None:
    address = PathProvider().new_path()
    cases = {
        address: "address is not signed: link address invalid",
        f"{address},someBadSig?=": "malformed address signature",
    }
    for signed, message in cases.items():
        with pytest.raises(LinkAddressError, match=message) as refused:
            signer.verify(repository="repo", branch="main", path="a/b.csv", signed=signed)
        assert refused.value.status_code == 400
    two_days_ago = int(time.time()) - 2 * 24 * 3600
    old = f"data/{_xid(YEAR_4000 - two_days_ago, bytes(8))}/{_xid(two_days_ago, bytes(8))}"
    with pytest.raises(LinkAddressError, match="link address expired"):
        signer.verify(repository="repo", branch="main", path="a/b.csv", signed=_signed(signer, old))


def test_addresses_and_downloads() -> None:
    assert split_address("s3://bucket/prefix/data/x") == ("bucket", "prefix/data/x")
    for address in ("local://repo/x", "gs://bucket/x", "s3:///x"):
        with pytest.raises(BadRequestError):
            split_address(address)
    assert content_disposition("data/batch.parquet") == "attachment; filename=batch.parquet"
    assert content_disposition("data/a b.csv") == 'attachment; filename="a b.csv"'


def test_s3_settings_from_lakefs_environment_variables() -> None:
    assert s3_settings({}) is None
    assert s3_settings({"LAKEFS_BLOCKSTORE_TYPE": "local"}) is None
    minio = s3_settings(
        {
            "LAKEFS_BLOCKSTORE_S3_ENDPOINT": "http://127.0.0.1:9000",
            "LAKEFS_BLOCKSTORE_S3_REGION": "eu-west-1",
            "LAKEFS_BLOCKSTORE_S3_CREDENTIALS_ACCESS_KEY_ID": "key",
            "LAKEFS_BLOCKSTORE_S3_CREDENTIALS_SECRET_ACCESS_KEY": "secret",
        }
    )
    assert minio == S3Settings(
        endpoint="http://127.0.0.1:9000",
        region="eu-west-1",
        access_key_id="key",
        secret_access_key="secret",
    )
    aws = s3_settings(
        {"LAKEFS_BLOCKSTORE_TYPE": "S3", "LAKEFS_BLOCKSTORE_S3_FORCE_PATH_STYLE": "false"}
    )
    assert aws == S3Settings(force_path_style=False)
    with pytest.raises(ValueError, match="local and s3 only"):
        s3_settings({"LAKEFS_BLOCKSTORE_TYPE": "gs"})


def test_a_local_entry_is_stored_as_before_s3_existed() -> None:
    """Entries of local repositories keep their stored form, so trees and commit ids do not
    change; an S3 entry adds its address, which is no part of its identity (lakeFS's neither)."""
    local = ObjectEntry("ab" * 32, 3, 1)
    assert set(local.as_dict()) == {"checksum", "size", "mtime", "content_type", "metadata"}
    in_s3 = ObjectEntry("ab" * 16, 3, 1, physical_address="s3://b/ns/data/p/i")
    assert in_s3.as_dict()["physical_address"] == "s3://b/ns/data/p/i"
    moved = ObjectEntry("ab" * 16, 3, 2, physical_address="s3://b/ns/data/p/j")
    assert in_s3.identity() == moved.identity()
