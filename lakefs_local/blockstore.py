"""The optional S3 block store of the local server: object bytes of ``s3://`` repositories.

Without it every repository keeps its bytes in the local content store (:mod:`.store`). With it,
a repository whose storage namespace is ``s3://bucket/prefix`` keeps them in that bucket, laid
out as lakeFS lays them out, and the SDK can move bytes straight to and from S3 through
presigned URLs (lakeFS's ``pkg/block/s3`` adapter):

- Addresses (``pkg/upload/path_provider.go``): every upload gets a fresh key
  ``<prefix>/data/<partition>/<id>``; both parts are xids (12 bytes, base32hex, 20 characters),
  the partition's time counting down from the year 4000 so newer partitions list first, renewed
  every hour or 50 000 ids. An address handed out for a presigned upload carries
  ``,<signature>``: an HMAC of (repository, branch, path, address), which linking checks and
  which is part of the key the bytes are PUT to (``catalog.GetAddressWithSignature``).
- Checksums: the MD5 hex of the bytes, what lakeFS records for an S3 object (the ETag of a
  single-part PUT, which the SDK sends back when it links; ``upload.WriteBlob`` for uploads
  through the server).
- Namespaces: creating a repository writes ``<namespace>/_lakefs/dummy`` and refuses a
  namespace that already has it, or that cannot be written (``ensureStorageNamespace``).
- Presigned URLs last 15 minutes (lakeFS's ``blockstore.s3.pre_signed_expiry`` default); a
  presigned read names the file in ``Content-Disposition`` as the adapter does.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lakefs_local.store import BLOB_CHUNK, BadRequestError, LakeFSError

if TYPE_CHECKING:
    from botocore.client import BaseClient
    from botocore.response import StreamingBody

S3_SCHEME = "s3://"
DATA_PREFIX = "data"  # upload.DefaultDataPrefix
PARTITION_SIZE = 50_000  # upload.DefaultDataPartitionSize
PARTITION_SECONDS = 3600  # upload.DefaultDataInterval
YEAR_4000 = 64_060_588_800  # upload.unixYear4000: partitions count down from here
LINK_SIGNING_DELIMITER = ","  # catalog.LinkAddressSigningDelimiter
LINK_ADDRESS_SECONDS = 24 * 3600  # catalog.LinkAddressTime
PRESIGNED_EXPIRY_SECONDS = 15 * 60  # config.DefaultBlockstoreS3PreSignedExpiry
DUMMY_KEY = "_lakefs/dummy"  # committed.block_storage_prefix + "/dummy"
DUMMY_DATA = b"this is dummy data - created by lakeFS to check accessibility"
# mime.FormatMediaType writes a parameter bare when it is an RFC 2045 token, quoted otherwise.
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z|~]+$")


class LinkAddressError(BadRequestError):
    """A staged address that lakeFS would not link (graveler.ErrLinkAddressInvalid/Expired or
    block.ErrInvalidAddress, all 400)."""


class DataNotFoundError(LakeFSError):
    """The bytes an entry names are missing from the bucket: block.ErrDataNotFound, which
    lakeFS answers with 410 "No data" (controller.go handleApiErrorCallback)."""

    status_code = 410


@dataclass(frozen=True)
class S3Settings:
    """How to reach the S3-compatible store (lakeFS's ``blockstore.s3.*``)."""

    endpoint: str | None = None
    """Endpoint URL (MinIO, moto, a gateway); unset: AWS itself."""
    region: str = "us-east-1"
    """Signing region."""
    force_path_style: bool = True
    """``endpoint/bucket/key`` URLs instead of ``bucket.endpoint/key`` (what MinIO needs)."""
    access_key_id: str | None = None
    """Access key; unset: boto3's default chain (``AWS_ACCESS_KEY_ID``, profiles, roles)."""
    secret_access_key: str | None = None
    """Secret of that key."""
    presigned_expiry_seconds: int = PRESIGNED_EXPIRY_SECONDS
    """Lifetime of a presigned URL."""


def is_s3(address: str) -> bool:
    """Whether an address or storage namespace lives in S3."""
    return address.startswith(S3_SCHEME)


def split_address(address: str) -> tuple[str, str]:
    """``s3://bucket/key`` as (bucket, key); refuse anything else as the S3 adapter does."""
    if not is_s3(address):
        raise BadRequestError(f"expected storage type s3: invalid address ({address})")
    bucket, _, key = address[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise BadRequestError(f"no bucket in {address}: invalid address")
    return bucket, key


def _xid(seconds: int, tail: bytes) -> str:
    """An xid: 4 bytes of big-endian Unix seconds then 8 bytes, in lowercase unpadded
    base32hex (which is how rs/xid spells its 12 bytes)."""
    raw = (seconds & 0xFFFFFFFF).to_bytes(4, "big") + tail
    return base64.b32hexencode(raw).decode().rstrip("=").lower()


def xid_time(text: str) -> int:
    """The Unix seconds an xid was made at; raise ValueError for anything else."""
    if len(text) != 20:
        raise ValueError(f"invalid ID {text!r}")
    try:
        raw = base64.b32hexdecode(text.upper() + "====")
    except binascii.Error as exc:
        raise ValueError(f"invalid ID {text!r}") from exc
    return int.from_bytes(raw[:4], "big")


class PathProvider:
    """lakeFS's PathPartitionProvider: ``data/<partition>/<id>`` for every new upload."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._machine = hashlib.md5(os.uname().nodename.encode()).digest()[:3]  # noqa: S324
        self._counter = int.from_bytes(os.urandom(3), "big")
        self._count = 0
        self._since = 0.0
        self._partition = ""

    def _new_id(self, seconds: int) -> str:
        self._counter = (self._counter + 1) & 0xFFFFFF
        pid = (os.getpid() & 0xFFFF).to_bytes(2, "big")
        return _xid(seconds, self._machine + pid + self._counter.to_bytes(3, "big"))

    def new_path(self) -> str:
        """A fresh relative address under the data prefix."""
        with self._lock:
            now = time.time()
            self._count += 1
            stale = now - self._since > PARTITION_SECONDS
            if not self._partition or self._count > PARTITION_SIZE or stale:
                self._count, self._since = 1, now
                self._partition = self._new_id(YEAR_4000 - int(now))
            return f"{DATA_PREFIX}/{self._partition}/{self._new_id(int(now))}"


def _address_json(repository: str, branch: str, path: str, address: str) -> bytes:
    # The struct catalog.getAddressJSON marshals, field names and order included.
    fields = {"Repository": repository, "Branch": branch, "Path": path, "PhysicalAddress": address}
    return json.dumps(fields, separators=(",", ":")).encode()


class LinkSigner:
    """Signs the addresses handed out for presigned uploads and checks them when linked
    (catalog.GetAddressWithSignature / VerifyLinkAddress)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _signature(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def sign(self, *, repository: str, branch: str, path: str, address: str) -> str:
        """``address,<signature>`` (URL-safe base64 without padding, so no ``/``)."""
        digest = self._signature(_address_json(repository, branch, path, address))
        encoded = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        return address + LINK_SIGNING_DELIMITER + encoded

    def verify(self, *, repository: str, branch: str, path: str, signed: str) -> None:
        """Refuse an address this server did not hand out for this repository, branch and
        path, or handed out more than a day ago; the messages are lakeFS's."""
        address, delimiter, signature = signed.rpartition(LINK_SIGNING_DELIMITER)
        if not delimiter:
            raise LinkAddressError("address is not signed: link address invalid")
        data = _address_json(repository, branch, path, address)
        try:
            given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
            if "=" in signature or "+" in signature or "/" in signature:
                raise ValueError(signature)
        except (binascii.Error, ValueError) as exc:
            message = f"malformed address signature: {data.decode()}: link address invalid"
            raise LinkAddressError(message) from exc
        if not hmac.compare_digest(given, self._signature(data)):
            raise LinkAddressError("invalid address signature: invalid address")
        try:
            created = xid_time(address.rsplit("/", 1)[-1])
        except ValueError as exc:
            raise LinkAddressError(str(exc)) from exc
        if time.time() - created > LINK_ADDRESS_SECONDS:
            raise LinkAddressError("link address expired")


def content_disposition(path: str) -> str:
    """``attachment; filename=<base name>`` as the S3 adapter asks S3 to answer a presigned read."""
    name = path.rsplit("/", 1)[-1]
    if _TOKEN.match(name):
        return f"attachment; filename={name}"
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'attachment; filename="{escaped}"'


class S3Blockstore:
    """Reads, writes and presigns object bytes in S3 through boto3."""

    def __init__(self, settings: S3Settings) -> None:
        import boto3  # noqa: PLC0415 - only a server with an S3 block store needs it
        from botocore.config import Config  # noqa: PLC0415

        self.settings = settings
        style = "path" if settings.force_path_style else "auto"
        self._client: BaseClient = boto3.client(
            "s3",
            endpoint_url=settings.endpoint,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": style}),
        )
        self.paths = PathProvider()

    def presign_put(self, address: str) -> tuple[str, int]:
        """A presigned PUT URL for an address, and when it expires (Unix seconds)."""
        bucket, key = split_address(address)
        expiry = self.settings.presigned_expiry_seconds
        url = self._client.generate_presigned_url(
            "put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expiry
        )
        return str(url), int(time.time()) + expiry

    def presign_get(self, address: str, *, filename: str) -> tuple[str, int]:
        """A presigned GET URL naming ``filename`` as the download, and its expiry."""
        bucket, key = split_address(address)
        expiry = self.settings.presigned_expiry_seconds
        params = {"Bucket": bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        url = self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expiry)
        return str(url), int(time.time()) + expiry

    def upload_file(self, source: Path, address: str) -> None:
        """Put a file's bytes at an address (multipart when large, as boto3 decides)."""
        bucket, key = split_address(address)
        self._client.upload_file(str(source), bucket, key)

    def chunks(self, address: str, start: int, length: int) -> Iterator[bytes]:
        """``length`` bytes of the object from ``start``, a MiB at a time. The request is made
        here, so a missing object raises before a response starts."""
        if length <= 0:
            return iter(())
        bucket, key = split_address(address)
        try:
            response = self._client.get_object(
                Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )
        except self._client.exceptions.NoSuchKey as exc:
            raise DataNotFoundError("No data") from exc
        return _drain(response["Body"])

    def claim_namespace(self, namespace: str) -> None:
        """Write ``<namespace>/_lakefs/dummy``, refusing a namespace where it already is: how
        lakeFS checks a new repository's namespace is reachable and unused
        (controller.go ensureStorageNamespace; the messages are its 400s)."""
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        bucket, key = split_address(f"{namespace.rstrip('/')}/{DUMMY_KEY}")
        try:
            try:
                self._client.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey"}:
                    raise
            else:
                raise BadRequestError(
                    "failed to create repository: found lakeFS objects in the storage "
                    f"(:{namespace}) key({DUMMY_KEY}): storage namespace already in use"
                )
            self._client.put_object(Bucket=bucket, Key=key, Body=DUMMY_DATA)
        except (BotoCoreError, ClientError) as exc:
            raise BadRequestError("failed to create repository: failed to access storage") from exc

    def release_namespace(self, namespace: str) -> None:
        """Remove the marker :meth:`claim_namespace` wrote (the repository was not created);
        best effort, so the reason the repository was refused is what the client hears."""
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        bucket, key = split_address(f"{namespace.rstrip('/')}/{DUMMY_KEY}")
        with contextlib.suppress(BotoCoreError, ClientError):
            self._client.delete_object(Bucket=bucket, Key=key)

    def read(self, address: str) -> bytes:
        """A whole (small) object."""
        bucket, key = split_address(address)
        try:
            response = self._client.get_object(Bucket=bucket, Key=key)
        except self._client.exceptions.NoSuchKey as exc:
            raise DataNotFoundError("No data") from exc
        data: bytes = response["Body"].read()
        return data


def _drain(body: StreamingBody) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(BLOB_CHUNK)
    finally:
        body.close()


class S3BlobWriter:
    """Streams an upload to a temporary file while hashing it (MD5, lakeFS's checksum for S3);
    ``finish`` puts it at its S3 address.

    The same interface as :class:`.store.BlobWriter`, so the server receives both alike.
    """

    def __init__(
        self,
        blockstore: S3Blockstore,
        address: str,
        spool_dir: Path,
        *,
        keep_local: Callable[[Path, str], str] | None = None,
    ) -> None:
        self.address = address
        self._keep_local = keep_local
        self._blockstore = blockstore
        self._md5 = hashlib.md5()  # noqa: S324 - lakeFS's content checksum, not security
        self.size = 0
        handle, name = tempfile.mkstemp(dir=spool_dir, prefix=".s3-upload-")
        self.temp_path = Path(name)
        self._file: BinaryIO = os.fdopen(handle, "wb")

    def write(self, chunk: bytes | bytearray) -> None:
        """Append a chunk."""
        self._md5.update(chunk)
        self._file.write(chunk)
        self.size += len(chunk)

    def finish(self) -> tuple[str, int]:
        """Upload the bytes; return (MD5 hex, size). With ``keep_local``, also hand the
        fsync'd file to it under the checksum (the store keeps action files that way)."""
        self._file.flush()
        if self._keep_local is not None:
            os.fsync(self._file.fileno())
        self._file.close()
        self._blockstore.upload_file(self.temp_path, self.address)
        checksum = self._md5.hexdigest()
        if self._keep_local is not None:
            self._keep_local(self.temp_path, checksum)
        return checksum, self.size

    def close(self) -> None:
        """Drop the temporary file."""
        if not self._file.closed:
            self._file.close()
        self.temp_path.unlink(missing_ok=True)
