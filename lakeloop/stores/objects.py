"""Named objects under one root URL: where every store keeps what it writes.

The root is a local folder (by default the state folder) or ``s3://bucket/prefix`` on any
S3-compatible object store, opened with fsspec; which one is a single setting
(``LAKELOOP_STORE__URL``, :func:`open_store`). A key is a ``/``-separated path under the root.

A write is atomic either way, so a reader never sees half an object: on a local disk the bytes go
to a hidden temporary file beside the name, are fsync'd, then renamed over it; on S3 a PUT is
atomic by itself. Objects are never appended to (S3 cannot): a store that grows, like the monitor
history, writes one object per entry under names that sort in time order.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import fsspec.core
from fsspec.implementations.local import LocalFileSystem

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from lakeloop.settings import Settings

_PARTIAL = ".tmp"
"""Suffix of a local object being written (its name also starts with a dot)."""


class ObjectStore:
    """Bytes by key under a root URL (a local folder or ``s3://bucket/prefix``)."""

    def __init__(self, fs: AbstractFileSystem, root: str, *, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")
        """Where the store is, as configured (no credentials: those come from the environment)."""
        self.local = isinstance(fs, LocalFileSystem)

    @classmethod
    def open(cls, url: str, **storage_options: Any) -> ObjectStore:
        """The store at ``url``: a folder path (``file://`` optional) or ``s3://bucket/prefix``;
        ``storage_options`` go to the fsspec filesystem (``endpoint_url`` for S3)."""
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        return cls(fs, root, url=url)

    @classmethod
    def folder(cls, path: Path) -> ObjectStore:
        """The store in a local folder."""
        return cls.open(str(path.absolute()))

    def child(self, prefix: str) -> ObjectStore:
        """The store of the keys under ``prefix`` (same filesystem, same connection)."""
        prefix = prefix.strip("/")
        return ObjectStore(self.fs, f"{self.root}/{prefix}", url=f"{self.url}/{prefix}")

    @property
    def name(self) -> str:
        """The last part of the root (``predictions``), for logs and thread names."""
        return self.root.rsplit("/", 1)[-1]

    def path(self, key: str) -> str:
        """The filesystem path of ``key``."""
        return f"{self.root}/{key.strip('/')}"

    def url_of(self, key: str) -> str:
        """Where ``key`` is, as a person or another tool reads it: a plain path on a local
        disk, ``s3://bucket/...`` on an object store."""
        path = self.path(key)
        return path if self.local else str(self.fs.unstrip_protocol(path))

    def put(self, key: str, data: bytes) -> str:
        """Write ``data`` as ``key``, atomically (replacing any object of that name); returns
        :meth:`url_of` the object."""
        path = self.path(key)
        if self.local:
            write_atomically(Path(path), data)
        else:
            self.fs.pipe_file(path, data)
        return self.url_of(key)

    def get(self, key: str) -> bytes:
        """The bytes of ``key``; ``FileNotFoundError`` when there is no such object."""
        return bytes(self.fs.cat_file(self.path(key)))

    def get_many(self, keys: list[str]) -> list[bytes]:
        """The bytes of each of ``keys``, in order; fetched concurrently from an object store
        (a monitor run reads hundreds of segments and history entries)."""
        if not keys:
            return []
        paths = [self.path(key) for key in keys]
        fetched = self.fs.cat(paths, on_error="raise")  # a list in, a dict by path out
        return [bytes(fetched[path]) for path in paths]

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def list_keys(
        self, prefix: str = "", *, after: str | None = None, before: str | None = None
    ) -> list[str]:
        """Every key under ``prefix`` (relative to the root), sorted by name; [] when none.
        With ``after`` and/or ``before`` (keys relative to the root), only the keys strictly
        between them by name: S3 is asked to list from ``after`` on (ListObjectsV2
        ``StartAfter``) and the listing stops at ``before``, so a few minutes of a long history
        cost a page, not the history; a local folder filters its sorted names. Objects still
        being written on a local disk are not listed."""
        if (after is not None or before is not None) and _is_s3(self.fs):
            return self._s3_keys_between(prefix, after=after, before=before)
        base = self.path(prefix) if prefix else self.root
        try:
            found = self.fs.find(base, withdirs=False)
        except FileNotFoundError:
            return []
        start = len(self.root) + 1
        keys = (str(path)[start:] for path in found)
        return sorted(
            key
            for key in keys
            if not _is_partial(key)
            and (after is None or key > after)
            and (before is None or key < before)
        )

    def _s3_keys_between(self, prefix: str, *, after: str | None, before: str | None) -> list[str]:
        """:meth:`list_keys` of a range on S3, page by page (keys come in name order)."""
        bucket, root_key, _ = self.fs.split_path(self.root)
        base = f"{root_key}/" if root_key else ""
        request: dict[str, Any] = {
            "Bucket": bucket,
            "Prefix": f"{base}{prefix.strip('/')}/" if prefix else base,
        }
        if after is not None:
            request["StartAfter"] = base + after
        keys: list[str] = []
        try:
            while True:
                page = self.fs.call_s3("list_objects_v2", **request)
                for listed in page.get("Contents", []):
                    key = listed["Key"][len(base) :]
                    if before is not None and key >= before:
                        return keys
                    if not key.endswith("/"):  # a folder marker another tool may have made
                        keys.append(key)
                if not page.get("IsTruncated"):
                    return keys
                request["ContinuationToken"] = page["NextContinuationToken"]
        except FileNotFoundError:  # no bucket: nothing, as a local folder not made yet
            return []

    @contextlib.contextmanager
    def reader(self, key: str) -> Iterator[BinaryIO]:
        """``key`` as a seekable file read lazily: a Parquet reader fetches only the footer and
        the columns it reads (ranged GETs on S3, not the whole object);
        ``FileNotFoundError`` when there is no such object."""
        options = {} if self.local else {"cache_type": "none"}  # each read is one ranged GET
        with self.fs.open(self.path(key), "rb", **options) as handle:
            yield handle

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it does not exist."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def put_folder(self, folder: Path) -> None:
        """Copy every file below the local ``folder`` into the store, keyed by its path under
        ``folder`` (a built site, a set of report files). Nothing to do when the store is that
        folder."""
        if self.local and Path(self.root).resolve() == folder.resolve():
            return
        for file in sorted(path for path in folder.rglob("*") if path.is_file()):
            self.put(file.relative_to(folder).as_posix(), file.read_bytes())

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """A local file holding ``key``, for tools that only open paths (an MLflow artifact
        upload): the file itself on a local disk, else a temporary copy removed afterwards."""
        if self.local:
            yield Path(self.path(key))
            return
        with tempfile.TemporaryDirectory(prefix="lakeloop-") as scratch:
            copy = Path(scratch) / key.rsplit("/", 1)[-1]
            copy.write_bytes(self.get(key))
            yield copy


def open_store(settings: Settings) -> ObjectStore:
    """The root store the settings name (``LAKELOOP_STORE__URL``, else the state folder)."""
    url = settings.store.url or str(settings.state_dir)
    options: dict[str, Any] = {}
    if fsspec.core.split_protocol(url)[0] == "s3":
        # Another process (the API) adds objects all the time: never answer a listing from cache.
        options["use_listings_cache"] = False
        if settings.store.endpoint_url:
            options["endpoint_url"] = settings.store.endpoint_url
    return ObjectStore.open(url, **options)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader finds the old file or the whole new one:
    a hidden temporary file beside it, fsync'd, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_PARTIAL}")
    try:
        with partial.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)  # a half-written file would only take space
        raise


def _is_s3(fs: AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "s3" in protocols


def _is_partial(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(_PARTIAL)
