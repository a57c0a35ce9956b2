"""A lakeFS-compatible HTTP server (the subset of ``/api/v1`` the official ``lakefs`` SDK uses).

Every JSON body is built from the SDK's own models (``lakefs_sdk.models``) and serialised with
their ``to_dict()``, so the wire format is what the SDK parses. Errors are lakeFS's
``{"message": ...}`` with lakeFS's status codes, so the SDK raises its usual exceptions.
Authentication is HTTP basic with one access key pair. Storage is :mod:`.store`; hooks are
:mod:`.actions`. Started with an S3 block store (:mod:`.blockstore`), ``s3://`` repositories
keep their bytes in S3 and the SDK takes lakeFS's presigned path: the storage config says
``pre_sign_support``, uploads go through the staging API (an address, a presigned PUT, a link)
and reads through presigned GETs (a 302 from GetObject, a URL from StatObject).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import hmac
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar

import anyio
from lakefs_sdk import models
from litestar import Litestar, Request, Response, Router, delete, get, head, post, put
from litestar.datastructures import State, UploadFile
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.params import Parameter
from litestar.response import Stream
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)
from pydantic.v1 import BaseModel

from lakefs_local.actions import ACTIONS_PREFIX, DEFAULT_ENV_PREFIX, ActionsRunner, HookRecord
from lakefs_local.blockstore import (
    DATA_PREFIX,
    LinkSigner,
    S3BlobWriter,
    S3Blockstore,
    S3Settings,
    is_s3,
    split_address,
)
from lakefs_local.store import (
    BLOB_CHUNK,
    DELETE_DEFAULT_BRANCH,
    THREE_DOT,
    ActionRunRecord,
    BadRequestError,
    BranchMovedError,
    CommitDraft,
    CommitRecord,
    DiffRecord,
    ForbiddenError,
    HookRunRecord,
    LakeFSError,
    MergeConflictError,
    NotFoundError,
    ObjectEntry,
    Page,
    RepositoryRecord,
    Store,
    TooManyTriesError,
    paginate,
    validate_path,
)

log = logging.getLogger("lakefs_local")

JSON = dict[str, object]
"""A JSON object: a request body before the SDK model parses it, a response body after
``to_dict()`` (whose values may still be datetimes for Litestar to encode)."""
# An SDK request model (lakefs_sdk.models are pydantic v1 models).
SDKRequest = TypeVar("SDKRequest", bound=BaseModel)

API_PREFIX = "/api/v1"
SERVER_VERSION = "1.0.0-lakeloop-local"
USER_METADATA_HEADER = "x-lakefs-meta-"  # what the SDK sends user metadata as (lakefs.object)
# Reachable without credentials, as on lakeFS.
PUBLIC_PATHS = frozenset({f"{API_PREFIX}/healthcheck", f"{API_PREFIX}/setup_lakefs"})
# Benchmarks only: log where each upload's time goes (receive, hash+write, fsync+rename, stage).
TIMING_ENV = "LAKEFS_LOCAL_TIMING"
# What an S3 operation answers on a server started without an S3 block store.
NO_S3 = "no S3 block store configured: operation not supported"
# lakeFS's actionStatusSkipped: a hook run that never started (its action run had failed).
SKIPPED = "skipped"
# Received MiB pieces that may wait for the hashing+writing thread (bounds upload memory).
UPLOAD_QUEUE = 2


@dataclass
class ServerState:
    """What every handler needs; kept in ``app.state.service``."""

    store: Store
    actions: ActionsRunner
    user_id: str
    upload_timing: bool = False
    """Log per-phase upload timings (``LAKEFS_LOCAL_TIMING``), decided once at start-up."""
    blockstore: S3Blockstore | None = None
    """Where ``s3://`` repositories keep their bytes; None: every repository is local."""
    link_signer: LinkSigner | None = None
    """Signs the addresses handed out for presigned uploads (set with ``blockstore``)."""

    def s3_for(self, repository: RepositoryRecord) -> S3Blockstore | None:
        """The S3 block store when this repository's bytes live there."""
        if self.blockstore is not None and is_s3(repository.storage_namespace):
            return self.blockstore
        return None

    def s3(self) -> S3Blockstore:
        """The S3 block store, for an entry that names an S3 address."""
        if self.blockstore is None:
            raise BadRequestError(NO_S3)
        return self.blockstore

    def signer(self) -> LinkSigner:
        """The link signer (there is one whenever there is an S3 block store)."""
        if self.link_signer is None:
            raise BadRequestError(NO_S3)
        return self.link_signer


def _service(state: State) -> ServerState:
    return state.service  # type: ignore[no-any-return]


def _commit_with_hooks(
    svc: ServerState, draft: CommitDraft, *, repository: str, branch: str
) -> CommitRecord:
    """Run pre-commit hooks (a failure aborts, nothing applied), apply the prepared commit,
    then fire post-commit hooks with the new commit, as lakeFS's graveler does. The caller
    holds the branch lock, so the branch cannot move under the hook's feet."""
    pre = HookRecord("pre-commit", repository, branch, source_ref=branch, commit=draft.commit)
    pre_run_id = svc.actions.run_pre(pre)
    result = svc.store.apply_commit(draft)
    svc.actions.run_post(
        HookRecord(
            "post-commit",
            repository,
            branch,
            source_ref=result.id,
            commit=result,
            commit_id=result.id,
            pre_run_id=pre_run_id,
        )
    )
    return result


def _around_hooks(svc: ServerState, record: HookRecord, apply: Callable[[], None]) -> None:
    """``pre-<event>`` hooks, the change, then ``post-<event>`` hooks (branch and tag events).

    ``record`` is the pre-* record; the post-* one is the same with the event renamed and the
    pre-run id attached, which is how lakeFS's graveler builds both.
    """
    pre_run_id = svc.actions.run_pre(record)
    apply()
    post_event = "post-" + record.event_type.removeprefix("pre-")
    svc.actions.run_post(replace(record, event_type=post_event, pre_run_id=pre_run_id))


class SDKModel(Protocol):
    """What every ``lakefs_sdk.models`` class offers: its wire form as a dict."""

    def to_dict(self) -> JSON:
        """The model as the JSON object the SDK parses back."""
        ...


def _json(model: SDKModel, status_code: int = 200) -> Response[JSON]:
    return Response(model.to_dict(), status_code=status_code, media_type="application/json")


def _pagination(page: Page) -> models.Pagination:
    return models.Pagination(
        has_more=page.has_more,
        next_offset=page.next_offset,
        results=len(page.results),
        max_per_page=page.max_per_page,
    )


def _commit_model(commit: CommitRecord) -> models.Commit:
    return models.Commit(
        id=commit.id,
        parents=commit.parents,
        committer=commit.committer,
        message=commit.message,
        creation_date=commit.creation_date,
        meta_range_id=commit.meta_range_id,
        metadata=commit.metadata,
        generation=commit.generation,
        version=1,
    )


def _repository_model(record: RepositoryRecord) -> models.Repository:
    return models.Repository(
        id=record.id,
        creation_date=record.creation_date,
        default_branch=record.default_branch,
        storage_namespace=record.storage_namespace,
        storage_id=None,
        read_only=None,
    )


def _object_model(
    store: Store,
    repo: str,
    path: str,
    entry: ObjectEntry | None,
    *,
    user_metadata: bool = True,
    presigned: tuple[str, int] | None = None,
) -> models.ObjectStats:
    """An entry as lakeFS states it; ``presigned`` (a URL and its expiry) replaces the physical
    address, as lakeFS's StatObject and ListObjects do when asked to presign."""
    if entry is None:  # a common prefix in a delimited listing
        return models.ObjectStats(
            path=path,
            path_type="common_prefix",
            physical_address="",
            physical_address_expiry=None,
            checksum="",
            size_bytes=None,
            mtime=0,
            content_type=None,
        )
    if entry.physical_address:
        address = entry.physical_address
    else:
        namespace = store.get_repository(repo).storage_namespace.rstrip("/")
        address = f"{namespace}/data/{entry.checksum}"
    if presigned is not None:
        address = presigned[0]
    return models.ObjectStats(
        path=path,
        path_type="object",
        physical_address=address,
        physical_address_expiry=None if presigned is None else presigned[1],
        checksum=entry.checksum,
        size_bytes=entry.size,
        mtime=entry.mtime,
        metadata=dict(entry.metadata) if user_metadata else None,
        content_type=entry.content_type,
    )


def _diff_list(
    diffs: list[DiffRecord], *, after: str | None, amount: int | None
) -> models.DiffList:
    page = paginate(diffs, key=lambda d: d.path, after=after, amount=amount)
    results = [
        models.Diff(type=d.type, path=d.path, path_type="object", size_bytes=d.size_bytes)
        for d in page.results
    ]
    return models.DiffList(pagination=_pagination(page), results=results)


def _parse(model: type[SDKRequest], data: JSON | None) -> SDKRequest:
    try:
        return model.parse_obj(data or {})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise BadRequestError(f"invalid request body: {exc}") from exc


# -- config, health, user ---------------------------------------------------------------------


def _storage_config(svc: ServerState) -> models.StorageConfig:
    """Without a block store, no presign support: the SDK then uploads through POST .../objects
    and downloads through GET. With S3, what lakeFS's S3 adapter answers (GetStorageNamespaceInfo
    over namespace.go's defaults), less what this server does not serve: imports and presigned
    multipart uploads (lakeFS answers false for the latter too with
    blockstore.s3.disable_pre_signed_multipart)."""
    s3 = svc.blockstore is not None
    scheme = "s3" if s3 else "local"
    return models.StorageConfig(
        blockstore_type=scheme,
        blockstore_namespace_example="s3://example-bucket/" if s3 else "local://example-repo",
        # The generated model's __init__ keyword is the field's alias (populate-by-name works).
        blockstore_namespace_ValidityRegex=f"^{scheme}://",
        pre_sign_support=s3,
        pre_sign_support_ui=s3,
        import_support=False,
        import_validity_regex=f"^{scheme}://",
        pre_sign_multipart_upload=False,
    )


@get("/healthcheck", status_code=204, sync_to_thread=False)
def healthcheck() -> None:
    """lakeFS answers 204 when alive."""


@get("/config", sync_to_thread=False)
def get_config(*, state: State) -> Response[JSON]:
    """Server version and storage capabilities."""
    version = models.VersionConfig(version=SERVER_VERSION, upgrade_recommended=False)
    storage = _storage_config(_service(state))
    return _json(models.Config(version_config=version, storage_config=storage))


@get("/config/version", sync_to_thread=False)
def get_version() -> Response[JSON]:
    """The server version."""
    return _json(models.VersionConfig(version=SERVER_VERSION, upgrade_recommended=False))


@get("/config/storage", sync_to_thread=False)
def get_storage_config(*, state: State) -> Response[JSON]:
    """Storage capabilities (older SDKs ask here)."""
    return _json(_storage_config(_service(state)))


@get("/setup_lakefs", sync_to_thread=False)
def get_setup_state() -> Response[JSON]:
    """The installation is always set up: credentials come from the environment."""
    return _json(models.SetupState(state="initialized", comm_prefs_missing=False))


@get("/user", sync_to_thread=False)
def get_current_user(*, state: State) -> Response[JSON]:
    """The one user of this server."""
    user = models.User(id=_service(state).user_id, creation_date=0, friendly_name=None, email=None)
    return _json(models.CurrentUser(user=user))


# -- repositories -----------------------------------------------------------------------------


@post("/repositories", sync_to_thread=True)
def create_repository(*, state: State, data: JSON) -> Response[JSON]:
    """Create a repository and its default branch; an ``s3://`` namespace on the S3 block store
    must be reachable and unused, and gets lakeFS's ``_lakefs/dummy`` marker."""
    svc = _service(state)
    body = _parse(models.RepositoryCreation, data)
    s3 = svc.blockstore if svc.blockstore and is_s3(body.storage_namespace) else None
    if s3 is not None:
        s3.claim_namespace(body.storage_namespace)
    try:
        record = svc.store.create_repository(
            body.name,
            body.storage_namespace,
            default_branch=body.default_branch or "main",
            committer=svc.user_id,
        )
    except LakeFSError:
        if s3 is not None:
            s3.release_namespace(body.storage_namespace)
        raise
    return _json(_repository_model(record), 201)


@get("/repositories", sync_to_thread=True)
def list_repositories(
    *, state: State, prefix: str = "", after: str | None = None, amount: int | None = None
) -> Response[JSON]:
    """List repositories."""
    page = _service(state).store.list_repositories(prefix=prefix, after=after, amount=amount)
    results = [_repository_model(r) for r in page.results]
    return _json(models.RepositoryList(pagination=_pagination(page), results=results))


@get("/repositories/{repository:str}", sync_to_thread=True)
def get_repository(*, state: State, repository: str) -> Response[JSON]:
    """One repository."""
    return _json(_repository_model(_service(state).store.get_repository(repository)))


@get("/repositories/{repository:str}/metadata", sync_to_thread=True)
def get_repository_metadata(*, state: State, repository: str) -> dict[str, str]:
    """Repository metadata (none is kept here)."""
    _service(state).store.get_repository(repository)
    return {}


@delete("/repositories/{repository:str}", sync_to_thread=True)
def delete_repository(*, state: State, repository: str) -> None:
    """Delete a repository."""
    _service(state).store.delete_repository(repository)


@get("/repositories/{repository:str}/settings/branch_protection", sync_to_thread=True)
def get_branch_protection_rules(*, state: State, repository: str) -> Response[list[JSON]]:
    """The protected branch patterns, with their ETag for a conditional update."""
    patterns, etag = _service(state).store.get_branch_protection(repository)
    rules = [models.BranchProtectionRule(pattern=pattern).to_dict() for pattern in patterns]
    return Response(rules, headers={"ETag": etag}, media_type="application/json")


@put(
    "/repositories/{repository:str}/settings/branch_protection",
    status_code=204,
    sync_to_thread=True,
)
def set_branch_protection_rules(
    *,
    state: State,
    repository: str,
    data: list[JSON],
    if_match: str | None = Parameter(header="If-Match", default=None),
) -> None:
    """Replace the protected branch patterns (each blocks staging writes and commits, as every
    lakeFS rule does); with If-Match, only if it is the current ETag (else 412)."""
    patterns = [_parse(models.BranchProtectionRule, rule).pattern for rule in data]
    _service(state).store.set_branch_protection(repository, patterns, if_match=if_match)


# -- branches ---------------------------------------------------------------------------------


@post("/repositories/{repository:str}/branches", sync_to_thread=True)
def create_branch(*, state: State, repository: str, data: JSON) -> Response[str]:
    """Create a branch; lakeFS answers 201 with the commit id as text."""
    svc = _service(state)
    body = _parse(models.BranchCreation, data)
    commit_id = svc.store.prepare_branch(repository, body.name, body.source)
    # lakeFS's CreateBranch record: the source as given, the new branch, the resolved commit.
    record = HookRecord(
        "pre-create-branch", repository, body.name, source_ref=body.source, commit_id=commit_id
    )
    _around_hooks(svc, record, lambda: svc.store.insert_branch(repository, body.name, commit_id))
    return Response(commit_id, status_code=201, media_type="text/html")


@get("/repositories/{repository:str}/branches", sync_to_thread=True)
def list_branches(
    *,
    state: State,
    repository: str,
    prefix: str = "",
    after: str | None = None,
    amount: int | None = None,
) -> Response[JSON]:
    """List branches."""
    page = _service(state).store.list_branches(
        repository, prefix=prefix, after=after, amount=amount
    )
    results = [models.Ref(id=name, commit_id=commit) for name, commit in page.results]
    return _json(models.RefList(pagination=_pagination(page), results=results))


@get("/repositories/{repository:str}/branches/{branch:str}", sync_to_thread=True)
def get_branch(*, state: State, repository: str, branch: str) -> Response[JSON]:
    """A branch and its head commit."""
    commit_id = _service(state).store.get_branch(repository, branch)
    return _json(models.Ref(id=branch, commit_id=commit_id))


@delete("/repositories/{repository:str}/branches/{branch:str}", sync_to_thread=True)
def delete_branch(*, state: State, repository: str, branch: str) -> None:
    """Delete a branch, running pre/post-delete-branch hooks from its head commit."""
    svc = _service(state)
    with svc.store.branch_lock(repository, branch):
        if svc.store.get_repository(repository).default_branch == branch:
            raise ForbiddenError(DELETE_DEFAULT_BRANCH)
        head = svc.store.get_branch(repository, branch)
        # lakeFS's DeleteBranch record: the branch and its head as source ref, no commit id.
        record = HookRecord("pre-delete-branch", repository, branch, source_ref=head)
        _around_hooks(svc, record, lambda: svc.store.delete_branch(repository, branch))


@get("/repositories/{repository:str}/branches/{branch:str}/diff", sync_to_thread=True)
def diff_branch(
    *,
    state: State,
    repository: str,
    branch: str,
    prefix: str = "",
    after: str | None = None,
    amount: int | None = None,
) -> Response[JSON]:
    """Uncommitted changes of a branch."""
    diffs = _service(state).store.diff_uncommitted(repository, branch, prefix=prefix)
    return _json(_diff_list(diffs, after=after, amount=amount))


# -- tags -------------------------------------------------------------------------------------


@post("/repositories/{repository:str}/tags", sync_to_thread=True)
def create_tag(*, state: State, repository: str, data: JSON) -> Response[JSON]:
    """Create a tag on the commit a ref resolves to, running pre/post-create-tag hooks."""
    svc = _service(state)
    body = _parse(models.TagCreation, data)
    force = bool(body.force)
    commit_id = svc.store.prepare_tag(repository, body.id, body.ref, force=force)
    # lakeFS's CreateTag record: no branch, the commit as source ref and commit id, the tag id.
    record = HookRecord(
        "pre-create-tag", repository, "", source_ref=commit_id, commit_id=commit_id, tag_id=body.id
    )
    _around_hooks(
        svc, record, lambda: svc.store.insert_tag(repository, body.id, commit_id, force=force)
    )
    return _json(models.Ref(id=body.id, commit_id=commit_id), 201)


@get("/repositories/{repository:str}/tags", sync_to_thread=True)
def list_tags(
    *,
    state: State,
    repository: str,
    prefix: str = "",
    after: str | None = None,
    amount: int | None = None,
) -> Response[JSON]:
    """List tags."""
    page = _service(state).store.list_tags(repository, prefix=prefix, after=after, amount=amount)
    results = [models.Ref(id=tag, commit_id=commit) for tag, commit in page.results]
    return _json(models.RefList(pagination=_pagination(page), results=results))


@get("/repositories/{repository:str}/tags/{tag:str}", sync_to_thread=True)
def get_tag(*, state: State, repository: str, tag: str) -> Response[JSON]:
    """A tag and its commit."""
    return _json(models.Ref(id=tag, commit_id=_service(state).store.get_tag(repository, tag)))


@delete("/repositories/{repository:str}/tags/{tag:str}", sync_to_thread=True)
def delete_tag(*, state: State, repository: str, tag: str) -> None:
    """Delete a tag, running pre/post-delete-tag hooks."""
    svc = _service(state)
    commit_id = svc.store.get_tag(repository, tag)
    record = HookRecord(
        "pre-delete-tag", repository, "", source_ref=commit_id, commit_id=commit_id, tag_id=tag
    )
    _around_hooks(svc, record, lambda: svc.store.delete_tag(repository, tag))


# -- objects ----------------------------------------------------------------------------------


@post("/repositories/{repository:str}/branches/{branch:str}/objects")
async def upload_object(
    request: Request[object, object, State],
    state: State,
    repository: str,
    branch: str,
    object_path: str = Parameter(query="path"),
) -> Response[JSON]:
    """Upload raw bytes (what the high-level SDK sends) or a multipart ``content`` field.

    The body streams to a temporary file in 1 MiB pieces while it is hashed, so memory does not
    grow with the object; the blob is fsync'd and in place before the staging row names it. A
    repository on the S3 block store gets the bytes at a fresh address under its namespace,
    checksummed with MD5, as lakeFS's UploadObject writes them (upload.WriteBlob).
    """
    svc = _service(state)
    validate_path(object_path)  # refuse before reading a byte of the body
    record = await anyio.to_thread.run_sync(svc.store.get_repository, repository)
    await anyio.to_thread.run_sync(svc.store.get_branch, repository, branch)
    await anyio.to_thread.run_sync(svc.store.check_writable, repository, branch)
    open_writer, address = _upload_target(svc, record, object_path)
    content_type = request.headers.get("content-type", "application/octet-stream")
    chunks: AsyncIterator[bytes]
    if content_type.startswith("multipart/form-data"):
        upload = (await request.form()).get("content")
        if not isinstance(upload, UploadFile):
            raise BadRequestError("multipart upload needs a 'content' file field")
        chunks, content_type = _upload_chunks(upload), upload.content_type
    else:
        chunks = request.stream()
    metadata = {
        key[len(USER_METADATA_HEADER) :]: value
        for key, value in request.headers.items()
        if key.lower().startswith(USER_METADATA_HEADER)
    }
    timing = _UploadTiming() if svc.upload_timing else None
    checksum, size = await _receive_blob(open_writer, chunks, timing)
    entry = ObjectEntry(checksum, size, int(time.time()), content_type, metadata, address)
    if_absent = request.headers.get("if-none-match") == "*"

    def stage() -> models.ObjectStats:
        svc.store.put_object(repository, branch, object_path, entry, if_absent=if_absent)
        return _object_model(svc.store, repository, object_path, entry)

    started = time.perf_counter()
    stats = await anyio.to_thread.run_sync(stage)
    if timing is not None:
        timing.stage = time.perf_counter() - started
        log.warning("upload timing %s: %s", object_path, timing.summary(size))
    return _json(stats, 201)


class BlobSink(Protocol):
    """Where an upload's bytes go: the local content store or an S3 address."""

    def write(self, chunk: bytes | bytearray) -> None:
        """Append a chunk."""

    def finish(self) -> tuple[str, int]:
        """Make the bytes durable; return (checksum, size)."""
        ...

    def close(self) -> None:
        """Drop whatever was not finished."""


def _upload_target(
    svc: ServerState, record: RepositoryRecord, object_path: str
) -> tuple[Callable[[], BlobSink], str]:
    """How to open the sink of one upload, and the physical address it names ("" for the local
    content store, where the checksum is the address)."""
    s3 = svc.s3_for(record)
    if s3 is None:
        return svc.store.blob_writer, ""
    address = f"{record.storage_namespace.rstrip('/')}/{s3.paths.new_path()}"
    # The hooks runner reads action files from the local content store by checksum.
    keep = svc.store.place_blob if object_path.startswith(ACTIONS_PREFIX) else None
    return lambda: S3BlobWriter(s3, address, svc.store.objects_dir, keep_local=keep), address


@dataclass
class _UploadTiming:
    """Seconds spent per phase of one upload (only with ``LAKEFS_LOCAL_TIMING`` set)."""

    started: float = field(default_factory=time.perf_counter)
    chunks: int = 0
    biggest: int = 0
    write: float = 0.0  # hashing + write(2), in the worker thread
    finish: float = 0.0  # fsync of the file, rename, fsync of the directory
    received: float = 0.0  # wall time from the handler start to the last body byte
    stage: float = 0.0  # the SQLite staging row (WAL commit, synchronous=FULL)

    def summary(self, size: int) -> str:
        mean = size // self.chunks if self.chunks else 0
        return (
            f"{size} B in {self.chunks} ASGI chunks (mean {mean} B, max {self.biggest} B); "
            f"receive {self.received * 1e3:.1f} ms, hash+write {self.write * 1e3:.1f} ms, "
            f"fsync+rename {self.finish * 1e3:.1f} ms, stage {self.stage * 1e3:.1f} ms, "
            f"total {(time.perf_counter() - self.started) * 1e3:.1f} ms"
        )


async def _upload_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(BLOB_CHUNK):
        yield chunk


async def _receive_blob(
    open_writer: Callable[[], BlobSink],
    chunks: AsyncIterator[bytes],
    timing: _UploadTiming | None = None,
) -> tuple[str, int]:
    """Write an async byte stream into a sink (the content store, or S3 through a temporary
    file); disk and network work run off the event loop.

    Receiving and hashing+writing overlap: the event loop keeps reading the socket (uvicorn stops
    reading while nobody consumes the body) while a worker thread hashes and writes the previous
    MiB. At most ``UPLOAD_QUEUE`` full pieces wait between the two, so memory stays a few MiB
    whatever the object size.
    """
    writer = await anyio.to_thread.run_sync(open_writer)
    clock = time.perf_counter
    send, receive = anyio.create_memory_object_stream[bytearray](UPLOAD_QUEUE)

    async def drain() -> None:
        async with receive:
            async for data in receive:
                started = clock()
                await anyio.to_thread.run_sync(writer.write, data)
                if timing is not None:
                    timing.write += clock() - started

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(drain)
            async with send:
                pending = bytearray()
                async for chunk in chunks:
                    if timing is not None:
                        timing.chunks += 1
                        timing.biggest = max(timing.biggest, len(chunk))
                    pending += chunk
                    if len(pending) >= BLOB_CHUNK:  # one thread hop per MiB, not per ASGI chunk
                        full, pending = pending, bytearray()
                        await send.send(full)
                if pending:
                    await send.send(pending)
        started = clock()
        if timing is not None:
            timing.received = started - timing.started
        result = await anyio.to_thread.run_sync(writer.finish)
        if timing is not None:
            timing.finish = clock() - started
        return result
    finally:
        await anyio.to_thread.run_sync(writer.close)


@get("/repositories/{repository:str}/refs/{ref:str}/objects", sync_to_thread=True)
def get_object(
    *,
    request: Request[object, object, State],
    state: State,
    repository: str,
    ref: str,
    object_path: str = Parameter(query="path"),
    presign: bool = False,
) -> Response[JSON] | Response[None] | Stream:
    """Object bytes streamed from disk or S3, honouring a single ``Range: bytes=`` header like
    lakeFS; with ``presign`` an S3 object answers 302 to a presigned URL (GetObject), which the
    SDK's HTTP client follows, range header and all."""
    svc = _service(state)
    store = svc.store
    entry = store.stat(repository, ref, object_path)
    if entry.physical_address and presign:
        url, _ = svc.s3().presign_get(entry.physical_address, filename=object_path)
        return Response(None, status_code=302, headers={"Location": url})
    headers = _object_headers(entry)
    start, end, status = 0, entry.size - 1, 200
    byte_range = request.headers.get("range")
    if byte_range:
        start, end = _parse_range(byte_range, entry.size)
        if start >= entry.size or start > end:
            error = models.Error(message="Requested Range Not Satisfiable")
            return Response(
                error.to_dict(), status_code=416, headers={"Content-Range": f"bytes */{entry.size}"}
            )
        headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        status = 206
    length = max(end - start + 1, 0)
    headers["Content-Length"] = str(length)
    if entry.physical_address:
        chunks = svc.s3().chunks(entry.physical_address, start, length)
    else:
        chunks = _blob_chunks(store, entry.checksum, start, length)
    return Stream(chunks, status_code=status, headers=headers, media_type=entry.content_type)


def _blob_chunks(store: Store, checksum: str, start: int, length: int) -> Iterator[bytes]:
    """Yield ``length`` bytes of a blob from ``start``, one MiB at a time."""
    with store.open_blob(checksum) as source:
        source.seek(start)
        while length > 0:
            chunk = source.read(min(BLOB_CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


@head("/repositories/{repository:str}/refs/{ref:str}/objects", sync_to_thread=True)
def head_object(
    *, state: State, repository: str, ref: str, object_path: str = Parameter(query="path")
) -> Response[None]:
    """Object headers only, its size and type among them as lakeFS sends them (HeadObject in
    pkg/api/controller.go); a bodiless 404 when missing."""
    try:
        entry = _service(state).store.stat(repository, ref, object_path)
    except NotFoundError:
        return Response(None, status_code=404)
    headers = _object_headers(entry) | {
        "Content-Length": str(entry.size),
        "Content-Type": entry.content_type,
    }
    return Response(None, headers=headers)


def _object_headers(entry: ObjectEntry) -> dict[str, str]:
    return {
        "ETag": f'"{entry.checksum}"',
        "Last-Modified": email.utils.formatdate(entry.mtime, usegmt=True),
        "Accept-Ranges": "bytes",
    }


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` as inclusive (start, end)."""
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or "," in spec:
        raise BadRequestError(f"invalid range: {header}")
    try:
        if not first:
            return max(size - int(last), 0), size - 1
        return int(first), min(int(last), size - 1) if last else size - 1
    except ValueError as exc:
        raise BadRequestError(f"invalid range: {header}") from exc


@get("/repositories/{repository:str}/refs/{ref:str}/objects/stat", sync_to_thread=True)
def stat_object(
    *,
    state: State,
    repository: str,
    ref: str,
    object_path: str = Parameter(query="path"),
    user_metadata: bool = True,
    presign: bool = False,
) -> Response[JSON]:
    """Object metadata; with ``presign``, an S3 object's physical address is a presigned GET
    URL and ``physical_address_expiry`` says until when (lakeFS's StatObject)."""
    svc = _service(state)
    entry = svc.store.stat(repository, ref, object_path)
    model = _object_model(
        svc.store,
        repository,
        object_path,
        entry,
        user_metadata=user_metadata,
        presigned=_presigned_read(svc, entry, object_path) if presign else None,
    )
    return _json(model)


def _presigned_read(svc: ServerState, entry: ObjectEntry, path: str) -> tuple[str, int] | None:
    """A presigned GET of an S3 object; None for a local one (this server reads those itself,
    presign or not)."""
    if not entry.physical_address:
        return None
    return svc.s3().presign_get(entry.physical_address, filename=path)


@get("/repositories/{repository:str}/refs/{ref:str}/objects/ls", sync_to_thread=True)
def list_objects(
    *,
    state: State,
    repository: str,
    ref: str,
    prefix: str = "",
    after: str | None = None,
    amount: int | None = None,
    delimiter: str = "",
    user_metadata: bool = True,
    presign: bool = False,
) -> Response[JSON]:
    """List objects (and common prefixes with a delimiter), lexicographically; ``presign`` as
    for a stat."""
    svc = _service(state)
    store = svc.store
    page = store.list_objects(
        repository, ref, prefix=prefix, after=after, amount=amount, delimiter=delimiter
    )
    results = [
        _object_model(
            store,
            repository,
            path,
            entry,
            user_metadata=user_metadata,
            presigned=_presigned_read(svc, entry, path) if presign and entry else None,
        )
        for path, entry in page.results
    ]
    return _json(models.ObjectStatsList(pagination=_pagination(page), results=results))


@delete("/repositories/{repository:str}/branches/{branch:str}/objects", sync_to_thread=True)
def delete_object(
    *, state: State, repository: str, branch: str, object_path: str = Parameter(query="path")
) -> None:
    """Stage an object's removal."""
    _service(state).store.delete_object(repository, branch, object_path)


@post(
    "/repositories/{repository:str}/branches/{branch:str}/objects/delete",
    status_code=200,
    sync_to_thread=True,
)
def delete_objects(*, state: State, repository: str, branch: str, data: JSON) -> Response[JSON]:
    """Stage several removals; per-path failures are reported, not raised."""
    store = _service(state).store
    errors = []
    for path in _parse(models.PathList, data).paths:
        try:
            store.delete_object(repository, branch, path)
        except NotFoundError:
            continue  # lakeFS treats deleting a missing object in a batch as done
        except LakeFSError as exc:
            errors.append(
                models.ObjectError(status_code=exc.status_code, message=str(exc), path=path)
            )
    return _json(models.ObjectErrorList(errors=errors))


@post("/repositories/{repository:str}/branches/{branch:str}/objects/copy", sync_to_thread=True)
def copy_object(
    *, state: State, repository: str, branch: str, dest_path: str, data: JSON
) -> Response[JSON]:
    """Copy an object from any ref to a path on this branch (same bytes, new mtime).

    An S3 object's copy names the same address (lakeFS copies the bytes to a new one unless the
    source is staged on the same branch; addresses here are never reused or collected, so
    sharing one is safe)."""
    store = _service(state).store
    body = _parse(models.ObjectCopyCreation, data)
    source = store.stat(repository, body.src_ref or branch, body.src_path)
    entry = replace(source, mtime=int(time.time()))
    store.put_object(repository, branch, dest_path, entry)
    return _json(_object_model(store, repository, dest_path, entry), 201)


# -- staging (presigned uploads) --------------------------------------------------------------
# Served only with an S3 block store: the SDK takes this path when the storage config says
# pre_sign_support. It asks for an address, PUTs the bytes to S3 itself, then links the address.


def _s3_repository(svc: ServerState, repository: str) -> tuple[RepositoryRecord, S3Blockstore]:
    record = svc.store.get_repository(repository)
    s3 = svc.s3_for(record)
    if s3 is None:  # controller.go LinkPhysicalAddress: the namespace is not the block store's
        raise BadRequestError("invalid blockstore type: invalid address")
    return record, s3


@get(
    "/repositories/{repository:str}/branches/{branch:str}/staging/backing",
    sync_to_thread=True,
)
def get_physical_address(
    *,
    state: State,
    repository: str,
    branch: str,
    object_path: str = Parameter(query="path"),
    presign: bool = False,
) -> Response[JSON]:
    """A fresh, signed address under the repository's namespace to upload to, and with
    ``presign`` a presigned PUT URL for it (lakeFS's GetPhysicalAddress, which checks neither
    the branch nor the path: linking does)."""
    svc = _service(state)
    record, s3 = _s3_repository(svc, repository)
    signed = svc.signer().sign(
        repository=repository, branch=branch, path=object_path, address=s3.paths.new_path()
    )
    address = f"{record.storage_namespace.rstrip('/')}/{signed}"
    url, expiry = s3.presign_put(address) if presign else (None, None)
    location = models.StagingLocation(
        physical_address=address, presigned_url=url, presigned_url_expiry=expiry
    )
    return _json(location)


@put(
    "/repositories/{repository:str}/branches/{branch:str}/staging/backing",
    status_code=200,
    sync_to_thread=True,
)
def link_physical_address(
    *,
    state: State,
    repository: str,
    branch: str,
    data: JSON,
    object_path: str = Parameter(query="path"),
    if_none_match: str | None = Parameter(header="If-None-Match", default=None),
) -> Response[JSON]:
    """Stage an object whose bytes a client put in S3 itself (lakeFS's LinkPhysicalAddress).

    An address under the namespace's ``data/`` must be one this server handed out for this
    repository, branch and path within a day (its signature says so); any other ``s3://``
    address is linked as it is, as lakeFS links a full address. The checksum is the client's
    (the ETag of its PUT), quotes and spaces trimmed.
    """
    svc = _service(state)
    body = _parse(models.StagingMetadata, data)
    record, s3 = _s3_repository(svc, repository)
    address = body.staging.physical_address or ""
    namespace = record.storage_namespace.rstrip("/") + "/"
    if address.startswith(namespace + DATA_PREFIX + "/"):
        relative = address[len(namespace) :]
        svc.signer().verify(repository=repository, branch=branch, path=object_path, signed=relative)
    else:
        split_address(address)  # the S3 adapter reads nothing but s3:// addresses
    checksum = body.checksum.strip(' "')
    if not checksum:
        raise BadRequestError("checksum is required")
    entry = ObjectEntry(
        checksum,
        body.size_bytes,
        body.mtime if body.mtime is not None else int(time.time()),
        body.content_type or ObjectEntry.content_type,
        dict(body.user_metadata or {}),
        address,
    )
    if object_path.startswith(ACTIONS_PREFIX):
        # The hooks runner reads action files from the local content store by checksum.
        svc.store.keep_bytes(s3.read(address), checksum)
    svc.store.put_object(repository, branch, object_path, entry, if_absent=if_none_match == "*")
    return _json(_object_model(svc.store, repository, object_path, entry))


# -- commits, log, diff, merge ----------------------------------------------------------------


@post("/repositories/{repository:str}/branches/{branch:str}/commits", sync_to_thread=True)
def commit(*, state: State, repository: str, branch: str, data: JSON) -> Response[JSON]:
    """Commit staged changes, running pre-commit hooks before and post-commit hooks after."""
    svc = _service(state)
    body = _parse(models.CommitCreation, data)
    with svc.store.branch_lock(repository, branch):
        draft = svc.store.prepare_commit(
            repository,
            branch,
            message=body.message,
            metadata=body.metadata,
            committer=svc.user_id,
            allow_empty=bool(body.allow_empty),
            date=body.var_date,
        )
        result = _commit_with_hooks(svc, draft, repository=repository, branch=branch)
    return _json(_commit_model(result), 201)


@get("/repositories/{repository:str}/commits/{commit_id:str}", sync_to_thread=True)
def get_commit(*, state: State, repository: str, commit_id: str) -> Response[JSON]:
    """A commit, by any ref (lakeFS resolves branch names here too)."""
    return _json(_commit_model(_service(state).store.get_commit(repository, commit_id)))


@get("/repositories/{repository:str}/refs/{ref:str}/commits", sync_to_thread=True)
def log_commits(
    *,
    state: State,
    repository: str,
    ref: str,
    after: str | None = None,
    amount: int | None = None,
    objects: list[str] | None = None,
    prefixes: list[str] | None = None,
    limit: bool = False,
    first_parent: bool = False,
    stop_at: str | None = None,
) -> Response[JSON]:
    """History from a ref, newest first."""
    page = _service(state).store.log(
        repository,
        ref,
        after=after,
        amount=amount,
        first_parent=first_parent,
        objects=objects,
        prefixes=prefixes,
        limit=limit,
        stop_at=stop_at,
    )
    results = [_commit_model(c) for c in page.results]
    return _json(models.CommitList(pagination=_pagination(page), results=results))


@get("/repositories/{repository:str}/refs/{left_ref:str}/diff/{right_ref:str}", sync_to_thread=True)
def diff_refs(
    *,
    state: State,
    repository: str,
    left_ref: str,
    right_ref: str,
    prefix: str = "",
    after: str | None = None,
    amount: int | None = None,
    diff_type: str = Parameter(query="type", default=THREE_DOT),
) -> Response[JSON]:
    """What merging the right ref into the left would change (``three_dot``, lakeFS's default),
    or the changes from the left ref to the right (``two_dot``)."""
    diffs = _service(state).store.diff_refs(
        repository, left_ref, right_ref, prefix=prefix, diff_type=diff_type
    )
    return _json(_diff_list(diffs, after=after, amount=amount))


@get(
    "/repositories/{repository:str}/refs/{source_ref:str}/merge/{destination_branch:str}",
    sync_to_thread=True,
)
def find_merge_base(
    *, state: State, repository: str, source_ref: str, destination_branch: str
) -> Response[JSON]:
    """The merge base of two refs."""
    store = _service(state).store
    source = store.dereference_commit(repository, source_ref)
    dest = store.dereference_commit(repository, destination_branch)
    base = store.merge_base(repository, source, dest)
    result = models.FindMergeBaseResult(
        source_commit_id=source, destination_commit_id=dest, base_commit_id=base
    )
    return _json(result)


@post(
    "/repositories/{repository:str}/refs/{source_ref:str}/merge/{destination_branch:str}",
    status_code=200,
    sync_to_thread=True,
)
def merge_into_branch(
    *,
    state: State,
    repository: str,
    source_ref: str,
    destination_branch: str,
    data: JSON | None = None,
) -> Response[JSON]:
    """Merge a ref into a branch with a merge commit (two parents, one if squashed), running
    merge hooks.

    A conflict answers 409 with lakeFS's body for it: an empty ``MergeResult``, no message.
    """
    svc = _service(state)
    body = _parse(models.Merge, data)
    try:
        result = _merge_with_retries(
            svc,
            repository=repository,
            source_ref=source_ref,
            destination=destination_branch,
            body=body,
        )
    except MergeConflictError:
        return _json(models.MergeResult(reference=""), 409)
    return _json(models.MergeResult(reference=result.id))


MERGE_MAX_TRIES = 10
"""graveler.BranchUpdateMaxTries: tries of a merge whose destination keeps moving."""
MERGE_BACKOFF_SECONDS = (0.5, 1.5, 5.0)
"""First wait, growth factor and longest wait between tries (graveler's BranchUpdateBackOff:
the exponential back-off defaults of cenkalti/backoff with MaxInterval 5 s), jittered ±50 %."""


def _merge_with_retries(
    svc: ServerState, *, repository: str, source_ref: str, destination: str, body: models.Merge
) -> CommitRecord:
    """lakeFS's optimistic merge (graveler.Merge in ``retryBranchUpdate``).

    The destination must have no uncommitted changes, checked once. Then each try computes the
    merge commit against the destination's head of the moment, runs the pre-merge hooks with
    that commit's id, and moves the branch only if its head is still the one merged against;
    if another merge or commit moved it, the try is dropped and the next one starts over (so
    pre-merge hooks may see one merge several times, each with a different commit id). After
    ``MERGE_MAX_TRIES`` lost races the merge fails with lakeFS's 429.
    """
    svc.store.check_clean(repository, destination)
    wait, growth, longest = MERGE_BACKOFF_SECONDS
    for attempt in range(1, MERGE_MAX_TRIES + 1):
        draft, source_commit = svc.store.prepare_merge(
            repository,
            source_ref,
            destination,
            message=body.message,
            metadata=body.metadata,
            committer=svc.user_id,
            strategy=body.strategy,
            # graveler's committedManager.Merge skips its "no changes" check for either flag.
            allow_empty=bool(body.allow_empty or body.force),
            squash=bool(body.squash_merge),
        )
        # graveler's pre-merge record: the source commit as source ref, the merge commit to be
        # (its id is known before the hook runs).
        pre = HookRecord(
            "pre-merge",
            repository,
            destination,
            source_ref=source_commit,
            commit=draft.commit,
            commit_id=draft.commit.id,
            merge_source=source_ref,
        )
        try:
            pre_run_id = svc.actions.run_pre(pre)
        except LakeFSError as error:
            # graveler.Merge wraps what its branch update returns: "update branch <dest>: ...".
            raise type(error)(f"update branch {destination}: {error}") from error
        try:
            # The lock only orders this short step against commits, which hold it from
            # computing their tree to moving the branch.
            with svc.store.branch_lock(repository, destination):
                result = svc.store.apply_commit(draft)
        except BranchMovedError:
            if attempt == MERGE_MAX_TRIES:
                break
            time.sleep(wait * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not secrecy
            wait = min(wait * growth, longest)
            continue
        # graveler's post-merge record: the merge commit as both source ref and commit id.
        post = HookRecord(
            "post-merge",
            repository,
            destination,
            source_ref=result.id,
            commit=result,
            commit_id=result.id,
            pre_run_id=pre_run_id,
            merge_source=source_ref,
        )
        svc.actions.run_post(post)
        return result
    raise TooManyTriesError("Too many attempts, try again later")


# -- action runs ------------------------------------------------------------------------------


def _ts(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


@get("/repositories/{repository:str}/actions/runs", sync_to_thread=True)
def list_repository_runs(
    *,
    state: State,
    repository: str,
    after: str | None = None,
    amount: int | None = None,
    branch: str | None = None,
    commit: str | None = None,
) -> Response[JSON]:
    """Action runs, newest first."""
    page = _service(state).store.list_action_runs(
        repository, branch=branch, commit=commit, after=after, amount=amount
    )
    results = [_run_model(r) for r in page.results]
    return _json(models.ActionRunList(pagination=_pagination(page), results=results))


@get("/repositories/{repository:str}/actions/runs/{run_id:str}", sync_to_thread=True)
def get_run(*, state: State, repository: str, run_id: str) -> Response[JSON]:
    """One action run."""
    return _json(_run_model(_service(state).store.get_action_run(repository, run_id)))


def _run_model(run: ActionRunRecord) -> models.ActionRun:
    return models.ActionRun(
        run_id=run.run_id,
        branch=run.branch,
        start_time=_ts(run.start_time),
        end_time=_ts(run.end_time),
        event_type=run.event_type,
        status=run.status,
        commit_id=run.commit_id,
    )


@get("/repositories/{repository:str}/actions/runs/{run_id:str}/hooks", sync_to_thread=True)
def list_run_hooks(
    *,
    state: State,
    repository: str,
    run_id: str,
    after: str | None = None,
    amount: int | None = None,
) -> Response[JSON]:
    """The hooks of an action run, in execution order."""
    page = _service(state).store.list_hook_runs(repository, run_id, after=after, amount=amount)
    body: JSON = {
        "pagination": _pagination(page).to_dict(),
        "results": [_hook_run_json(h) for h in page.results],
    }
    return Response(body, media_type="application/json")


def _hook_run_json(hook: HookRunRecord) -> JSON:
    """One hook run as lakeFS's ListRunHooks answers it: a skipped hook (one that never started,
    so its start time is Go's zero) has status ``skipped`` and no ``end_time``.

    ``skipped`` is outside the SDK's ``HookRun`` status enum (lakeFS's own OpenAPI lacks it), so
    that entry is written as JSON directly; the others go through the model as usual.
    """
    if hook.status != SKIPPED:
        listed: JSON = models.HookRun(
            hook_run_id=hook.hook_run_id,
            action=hook.action,
            hook_id=hook.hook_id,
            start_time=_ts(hook.start_time),
            end_time=_ts(hook.end_time),
            status=hook.status,
        ).to_dict()
        return listed
    return {
        "hook_run_id": hook.hook_run_id,
        "action": hook.action,
        "hook_id": hook.hook_id,
        "start_time": _ts(hook.start_time),
        "status": SKIPPED,
    }


@get(
    "/repositories/{repository:str}/actions/runs/{run_id:str}/hooks/{hook_run_id:str}/output",
    sync_to_thread=True,
)
def get_run_hook_output(
    *, state: State, repository: str, run_id: str, hook_run_id: str
) -> Response[bytes]:
    """The text log of one hook run (secrets masked)."""
    page = _service(state).store.list_hook_runs(repository, run_id, amount=1000)
    for hook in page.results:
        if hook.hook_run_id == hook_run_id:
            return Response(hook.output.encode(), media_type="application/octet-stream")
    raise NotFoundError(f"hook run not found: {hook_run_id} (run {run_id})")


# -- errors, auth, logging --------------------------------------------------------------------


def _lakefs_error(_: Request[object, object, State], exc: LakeFSError) -> Response[JSON]:
    return _json(models.Error(message=str(exc)), exc.status_code)


def _http_error(_: Request[object, object, State], exc: HTTPException) -> Response[JSON]:
    return _json(models.Error(message=str(exc.detail)), exc.status_code)


def _unexpected_error(_: Request[object, object, State], exc: Exception) -> Response[JSON]:
    log.error("unhandled error: %r", exc, exc_info=exc)
    return _json(models.Error(message="internal server error"), 500)


def _credentials_ok(header: str | None, key_id: str, secret: str) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    given_id, _, given_secret = decoded.partition(":")
    # Evaluate both comparisons so timing does not reveal which half was wrong.
    id_ok = hmac.compare_digest(given_id.encode(), key_id.encode())
    secret_ok = hmac.compare_digest(given_secret.encode(), secret.encode())
    return id_ok and secret_ok


def auth_and_log_middleware(key_id: str, secret: str) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware: basic auth on every non-public route, one INFO log line per request."""
    unauthorized = models.Error(message="error authenticating request").to_json().encode()

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            # ScopeType is a str enum, so this is the ASGI ``scope["type"] == "http"`` check; the
            # enum member lets mypy narrow Scope to HTTPScope (which has "method").
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = {"code": 0}

            async def send_logged(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
                authorized = scope["path"] in PUBLIC_PATHS or _credentials_ok(
                    headers.get("authorization"), key_id, secret
                )
                if authorized:
                    await app(scope, receive, send_logged)
                else:
                    await _send_json(send_logged, 401, unauthorized)
            finally:
                # Method, path and status only: never headers, so never credentials.
                elapsed = (time.perf_counter() - started) * 1000
                log.info("%s %s %s %.1fms", scope["method"], scope["path"], status["code"], elapsed)

        return middleware

    return factory


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": headers,
    }
    # more_body=False is the ASGI default: this is the whole body.
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(start)
    await send(end)


ROUTES = [
    healthcheck,
    get_config,
    get_version,
    get_storage_config,
    get_setup_state,
    get_current_user,
    create_repository,
    list_repositories,
    get_repository,
    get_repository_metadata,
    delete_repository,
    get_branch_protection_rules,
    set_branch_protection_rules,
    create_branch,
    list_branches,
    get_branch,
    delete_branch,
    diff_branch,
    create_tag,
    list_tags,
    get_tag,
    delete_tag,
    upload_object,
    get_object,
    head_object,
    stat_object,
    list_objects,
    delete_object,
    delete_objects,
    copy_object,
    commit,
    get_commit,
    log_commits,
    diff_refs,
    find_merge_base,
    merge_into_branch,
    list_repository_runs,
    get_run,
    list_run_hooks,
    get_run_hook_output,
]
STAGING_ROUTES = [get_physical_address, link_physical_address]
"""Served only with an S3 block store (a local one cannot presign, as lakeFS's cannot)."""


def create_app(
    *,
    data_dir: Path,
    access_key_id: str,
    secret_access_key: str,
    actions_env_prefix: str = DEFAULT_ENV_PREFIX,
    user_id: str = "admin",
    upload_timing: bool = False,
    blockstore_s3: S3Settings | None = None,
) -> Litestar:
    """Build the lakeFS-compatible app over ``data_dir`` with one access key pair.

    With ``blockstore_s3``, repositories whose storage namespace is ``s3://bucket/prefix`` keep
    their bytes in that bucket, the storage config advertises presigned URLs (so the SDK moves
    bytes to and from S3 itself) and the staging API is served; other repositories stay local.
    """
    if not access_key_id or not secret_access_key:
        raise ValueError("access_key_id and secret_access_key are required")
    store = Store(Path(data_dir))
    actions = ActionsRunner(store, env_prefix=actions_env_prefix)
    service = ServerState(
        store=store, actions=actions, user_id=user_id, upload_timing=upload_timing
    )
    routes = list(ROUTES)
    if blockstore_s3 is not None:
        service.blockstore = S3Blockstore(blockstore_s3)
        # lakeFS signs with its auth.encrypt.secret_key; this server's one secret is the key
        # pair's, so an address handed out before a restart still links after it.
        key = hashlib.sha256(b"lakefs_local link address\0" + secret_access_key.encode())
        service.link_signer = LinkSigner(key.digest())
        routes += STAGING_ROUTES
    return Litestar(
        route_handlers=[Router(path=API_PREFIX, route_handlers=routes)],
        middleware=[auth_and_log_middleware(access_key_id, secret_access_key)],
        exception_handlers={
            LakeFSError: _lakefs_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        state=State({"service": service}),
        on_shutdown=[actions.close],
        openapi_config=None,
        request_max_body_size=None,  # data batches can be large; lakeFS sets no API limit
    )
