"""Persistent storage of the lakeFS-compatible local server.

Object bytes live content-addressed (sha256) under ``<data_dir>/objects``, or, for a
repository on the S3 block store (:mod:`.blockstore`), in its bucket, the entry naming their
``physical_address`` and its checksum being S3's (an MD5); everything else
(repositories, branches, tags, staged changes, commits, trees, action runs) lives in one SQLite
file. The model follows lakeFS: a branch points at a commit and carries a staging area of
uncommitted changes (``None`` = tombstone); a tag names a commit; a commit holds its parents,
metadata and a full tree snapshot (``path -> ObjectEntry``) identified by ``meta_range_id``;
commit ids are sha256 of the commit content.

Durability: blob bytes are written to a temporary file, fsync'd, renamed into place and the
directory fsync'd *before* any metadata row referencing them is written; SQLite runs in WAL mode
with ``synchronous=FULL``, so every transaction that returned is on disk (a SIGKILL or a power
loss after a commit answered cannot lose it). NORMAL would survive a process crash too (the WAL
reaches the OS before the commit returns) but not a power cut; one extra fsync per metadata write
is cheap next to the blob's own fsync, so we take FULL.

Concurrency: metadata writes are serialised with one lock. Moving a branch is a compare-and-set:
a draft remembers the head it was computed from and applying it fails with BranchMovedError if
the head moved (lakeFS's ``SetIf`` predicate on the branch record). Commits hold a per-branch
lock from computing the new tree through the pre-hook to moving the branch; merges are
optimistic like lakeFS's (the server retries them), taking the lock only to apply. Every call
opens its own SQLite connection, so the store is safe to share between the server's worker
threads.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import heapq
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

SCHEMA = """
CREATE TABLE IF NOT EXISTS repositories (
    id TEXT PRIMARY KEY, storage_namespace TEXT NOT NULL, default_branch TEXT NOT NULL,
    creation_date INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS branches (
    repo TEXT NOT NULL, name TEXT NOT NULL, commit_id TEXT NOT NULL,
    staging_version INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (repo, name));
CREATE TABLE IF NOT EXISTS staging (
    repo TEXT NOT NULL, branch TEXT NOT NULL, path TEXT NOT NULL, entry TEXT,
    PRIMARY KEY (repo, branch, path));
CREATE TABLE IF NOT EXISTS commits (
    repo TEXT NOT NULL, id TEXT NOT NULL, parents TEXT NOT NULL, committer TEXT NOT NULL,
    message TEXT NOT NULL, creation_date INTEGER NOT NULL, meta_range_id TEXT NOT NULL,
    metadata TEXT NOT NULL, generation INTEGER NOT NULL, PRIMARY KEY (repo, id));
CREATE TABLE IF NOT EXISTS tags (
    repo TEXT NOT NULL, id TEXT NOT NULL, commit_id TEXT NOT NULL, PRIMARY KEY (repo, id));
CREATE TABLE IF NOT EXISTS trees (id TEXT PRIMARY KEY, entries TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (
    repo TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (repo, key));
CREATE TABLE IF NOT EXISTS storage_namespaces (
    storage_namespace TEXT PRIMARY KEY, repo TEXT NOT NULL);
INSERT OR IGNORE INTO storage_namespaces
    SELECT rtrim(storage_namespace, '/'), id FROM repositories;
CREATE TABLE IF NOT EXISTS action_runs (
    repo TEXT NOT NULL, run_id TEXT NOT NULL, branch TEXT NOT NULL, commit_id TEXT NOT NULL,
    source_ref TEXT NOT NULL, event_type TEXT NOT NULL, start_time REAL NOT NULL,
    end_time REAL NOT NULL, status TEXT NOT NULL, PRIMARY KEY (repo, run_id));
CREATE TABLE IF NOT EXISTS hook_runs (
    repo TEXT NOT NULL, run_id TEXT NOT NULL, hook_run_id TEXT NOT NULL, action TEXT NOT NULL,
    hook_id TEXT NOT NULL, start_time REAL NOT NULL, end_time REAL NOT NULL, status TEXT NOT NULL,
    output TEXT NOT NULL, PRIMARY KEY (repo, run_id, hook_run_id));
"""

# lakeFS's validators (pkg/validator): repository ids are DNS-like, branch ids word-like.
REPOSITORY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
BRANCH_ID = re.compile(r"^\w[-\w]*$", re.ASCII)  # Go's \w is ASCII (pkg/validator)
# lakeFS's ParseRef: a base, then modifiers each starting with one of ~ ^ @ $.
REF_PART = re.compile(r"(^|[~^@$])[^~^@$]*")
FULL_COMMIT_ID = re.compile(r"[0-9a-fA-F]{64}")
COMMIT_ID_PREFIX = re.compile(r"[0-9a-fA-F]{1,64}")
# lakeFS's ValidateTagID (git-check-ref-format, but '~' allowed): no '/', '..', '@{', any of
# ^:?*[\ , or a character at or below space; not '@', not ending in '.' or '.lock'.
TAG_ID = re.compile(r"^(?!@$)(?!.*(?:\.\.|@\{))(?!.*(?:\.|\.lock)$)[^/^:?*\[\\\x00-\x20]+$")
INVALID_TAG_ID = "argument tagID: tag id: invalid value: validation error"
INVALID_BRANCH_ID = "argument branch: branch id: invalid value: validation error"
INVALID_REF = "ref: invalid value: validation error"  # lakeFS's ErrInvalidRef
DIRTY_BRANCH = "uncommitted changes (dirty branch)"  # lakeFS's ErrDirtyBranch
DELETE_DEFAULT_BRANCH = "cannot delete repository default branch"  # ErrDeleteDefaultBranch
WRITE_TO_PROTECTED_BRANCH = "cannot write to protected branch"  # ErrWriteToProtectedBranch
COMMIT_TO_PROTECTED_BRANCH = "cannot commit to protected branch"  # ErrCommitToProtectedBranch
PROTECTION_SETTING = "protected_branches"  # pkg/graveler/branch ProtectionSettingKey
STAGING_NOT_A_COMMIT = "reference to staging area with $ is not a commit"
TWO_DOT, THREE_DOT = "two_dot", "three_dot"  # DiffRefs' ``type``; lakeFS defaults to three_dot
MERGE_STRATEGY_KEY = ".lakefs.merge.strategy"  # graveler.MergeStrategyMetadataKey
# Merge request strategy -> the value graveler writes under MERGE_STRATEGY_KEY.
MERGE_STRATEGIES = {"": "default", "dest-wins": "dest-wins", "source-wins": "source-wins"}
MAX_PATH_LENGTH = 1024  # lakeFS's catalog.MaxPathLength
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
BLOB_CHUNK = 1 << 20
# What a blob may be named (a sha256, or an S3 ETag kept by keep_bytes): safe as a file name.
_BLOB_NAME = re.compile(r"[0-9A-Za-z-]{3,128}")
FIRST_COMMIT_MESSAGE = "Repository created"  # lakeFS's graveler.FirstCommitMsg
DEFAULT_AMOUNT = 100
MAX_AMOUNT = 1000
_TREE_CACHE_SIZE = 64


class LakeFSError(Exception):
    """An error with the HTTP status lakeFS answers for it."""

    status_code = 500


class BadRequestError(LakeFSError):
    """Invalid input (lakeFS: 400)."""

    status_code = 400


class NotFoundError(LakeFSError):
    """Missing repository, ref or object (lakeFS: 404)."""

    status_code = 404


class ConflictError(LakeFSError):
    """Already exists, or a merge conflict (lakeFS: 409)."""

    status_code = 409


class PreconditionFailedError(LakeFSError):
    """A pre-* hook failed, or an If-None-Match precondition (lakeFS: 412)."""

    status_code = 412


class ForbiddenError(LakeFSError):
    """A protected branch, or the default branch deleted (lakeFS: 403)."""

    status_code = 403


class TooManyTriesError(LakeFSError):
    """A branch update lost its race too many times (lakeFS's ErrTooManyTries: 429)."""

    status_code = 429


class MergeConflictError(ConflictError):
    """A merge found paths changed differently on both sides (lakeFS's ErrConflictFound)."""


class BranchMovedError(ConflictError):
    """The branch moved between computing an update and applying it (lakeFS's failed
    ``SetIf`` predicate); merges retry on it."""


@dataclass(frozen=True)
class ObjectEntry:
    """One object in a tree: what lakeFS keeps per path."""

    checksum: str
    size: int
    mtime: int
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)
    physical_address: str = ""
    """Where the bytes are in an S3 block store (``s3://bucket/key``); empty: in the local
    content store, under the checksum (a sha256). Stored only when set, so entries of local
    repositories (and so their trees and commit ids) are what they were before S3 existed."""

    def identity(self) -> tuple[str, str, str]:
        """What makes two entries "the same" for diff and merge (lakeFS compares identities:
        size, checksum, metadata and content type, never the address; entry.go EntryToValue)."""
        return self.checksum, self.content_type, json.dumps(self.metadata, sort_keys=True)

    def as_dict(self) -> dict[str, object]:
        """The stored form: every field, the physical address only when set."""
        stored = asdict(self)
        if not self.physical_address:
            del stored["physical_address"]
        return stored


@dataclass(frozen=True)
class RepositoryRecord:
    """A repository row."""

    id: str
    storage_namespace: str
    default_branch: str
    creation_date: int


@dataclass(frozen=True)
class CommitRecord:
    """A commit row."""

    id: str
    parents: list[str]
    committer: str
    message: str
    creation_date: int
    meta_range_id: str
    metadata: dict[str, str]
    generation: int


@dataclass(frozen=True)
class Resolved:
    """A ref expression resolved to a commit, plus whether a branch's staging area applies.

    As in lakeFS: object reads through a plain branch name include its staging area,
    ``branch@`` never does; ``branch$`` names the staging area itself (``staging_modifier``),
    which diffs and merges accept only where lakeFS does.
    """

    commit_id: str
    branch: str | None = None
    with_staging: bool = False
    staging_modifier: bool = False


@dataclass(frozen=True)
class CommitDraft:
    """A commit computed but not applied; applying checks the branch did not move meanwhile."""

    repo: str
    branch: str
    commit: CommitRecord
    tree: dict[str, ObjectEntry]
    expected_head: str
    # A commit carries the staged rows it took: applying clears exactly those, so an upload that
    # lands while the commit runs stays staged for the next commit (lakeFS seals its staging token
    # the same way). A merge carries None: its destination was checked clean when it started, and
    # writes staged since then stay staged on top of the merge commit.
    staged: dict[str, ObjectEntry | None] | None = None


@dataclass(frozen=True)
class ActionRunRecord:
    """One run of the actions matching an event."""

    run_id: str
    branch: str
    commit_id: str
    source_ref: str
    event_type: str
    start_time: float
    end_time: float
    status: str


@dataclass(frozen=True)
class HookRunRecord:
    """One hook executed within an action run."""

    hook_run_id: str
    action: str
    hook_id: str
    start_time: float
    end_time: float
    status: str
    output: str = ""


Item = TypeVar("Item")


@dataclass(frozen=True)
class Page(Generic[Item]):
    """A page of a listing, lakeFS-style."""

    results: list[Item]
    has_more: bool
    next_offset: str
    max_per_page: int


@dataclass(frozen=True)
class DiffRecord:
    """One changed path between two trees."""

    type: str
    path: str
    size_bytes: int | None


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _entry_to_json(entry: ObjectEntry | None) -> str | None:
    return None if entry is None else json.dumps(entry.as_dict(), sort_keys=True)


def _entry_from_json(raw: str | None) -> ObjectEntry | None:
    return None if raw is None else ObjectEntry(**json.loads(raw))


def _overlay(
    committed: dict[str, ObjectEntry], staged: dict[str, ObjectEntry | None]
) -> dict[str, ObjectEntry]:
    """A committed tree with staged changes applied (``None`` removes a path)."""
    view = dict(committed)
    for path, entry in staged.items():
        if entry is None:
            view.pop(path, None)
        else:
            view[path] = entry
    return view


def clamp_amount(amount: int | None) -> int:
    """lakeFS's page size rules: default 100, at most 1000."""
    if amount is None or amount < 0:
        return DEFAULT_AMOUNT
    return min(amount, MAX_AMOUNT)


def paginate(
    items: list[Item], *, key: Callable[[Item], str], after: str | None, amount: int | None
) -> Page[Item]:
    """Cut a sorted listing after ``after`` into one page of ``amount`` items."""
    size = clamp_amount(amount)
    start = [item for item in items if not after or key(item) > after]
    page = start[:size]
    has_more = len(start) > size
    next_offset = key(page[-1]) if has_more and page else ""
    return Page(page, has_more, next_offset, size)


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry (a rename or create inside it) to disk."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def validate_path(path: str) -> str:
    """Refuse object paths that are empty, too long, absolute, or could leave the repository.

    Real lakeFS (catalog.ValidatePath) checks only that a path is non-empty and at most 1024
    bytes, so it stores ``../x`` as a plain key. We refuse such keys anyway: a path is a key, but
    tools that later mirror a repository to disk (``lakectl local``, rclone, our own readers)
    join keys onto a directory, and a ``..`` or absolute key then writes outside it.
    """
    if not path:
        raise BadRequestError("path is required: invalid object path ''")
    if len(path.encode()) > MAX_PATH_LENGTH:
        raise BadRequestError(
            f"invalid object path {path[:80]!r}...: longer than {MAX_PATH_LENGTH} bytes"
        )
    if "\x00" in path:
        raise BadRequestError(f"invalid object path {path!r}: contains a NUL byte")
    if path.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(path):
        raise BadRequestError(f"invalid object path {path!r}: absolute paths are not allowed")
    # Backslash too: on Windows it separates directories, so "..\\x" escapes just the same.
    if ".." in re.split(r"[/\\]", path):
        raise BadRequestError(f"invalid object path {path!r}: '..' segments are not allowed")
    return path


class BlobWriter:
    """Streams bytes to a temporary file while hashing; ``finish`` makes the blob durable.

    Memory stays at one chunk whatever the object size. Use as a context manager: leaving it
    without ``finish`` (an error, a dropped client) removes the temporary file.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._digest = hashlib.sha256()
        self.size = 0
        handle, name = tempfile.mkstemp(dir=store.objects_dir, prefix=".upload-")
        self._temp_path = Path(name)
        self._file: BinaryIO = os.fdopen(handle, "wb")

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def write(self, chunk: bytes | bytearray) -> None:
        """Append a chunk."""
        self._digest.update(chunk)
        self._file.write(chunk)
        self.size += len(chunk)

    def finish(self) -> tuple[str, int]:
        """fsync, rename into the content store; return (sha256 hex, size)."""
        self._file.flush()
        os.fsync(self._file.fileno())  # bytes on disk before any metadata can point at them
        self._file.close()
        checksum = self._store.place_blob(self._temp_path, self._digest.hexdigest())
        return checksum, self.size

    def close(self) -> None:
        """Drop the temporary file if it was not placed."""
        if not self._file.closed:
            self._file.close()
        self._temp_path.unlink(missing_ok=True)


class Store:
    """Repositories, branches, commits and objects of the local server."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.objects_dir = self.data_dir / "objects"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "lakefs.sqlite3"
        self.write_lock = threading.RLock()
        self._branch_locks: dict[tuple[str, str], threading.Lock] = {}
        self._branch_locks_guard = threading.Lock()
        self._tree_cache: dict[str, dict[str, ObjectEntry]] = {}
        self._tree_cache_lock = threading.Lock()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    # -- plumbing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.db_path, timeout=30)
        # WAL + FULL: a transaction that returned survives a crash or power loss (module docstring).
        connection.execute("PRAGMA synchronous=FULL")
        try:
            with connection:  # commits on success, rolls back on error
                yield connection
        finally:
            connection.close()

    @contextlib.contextmanager
    def branch_lock(self, repo: str, branch: str) -> Iterator[None]:
        """Hold the lock of one branch: commits and merges on it run one at a time."""
        with self._branch_locks_guard:
            lock = self._branch_locks.setdefault((repo, branch), threading.Lock())
        with lock:
            yield

    # -- blobs ----------------------------------------------------------------------------------

    def blob_path(self, checksum: str) -> Path:
        """Where the bytes with this sha256 live."""
        return self.objects_dir / checksum[:2] / checksum[2:]

    def blob_writer(self) -> BlobWriter:
        """A writer that streams bytes into the content store (see :class:`BlobWriter`)."""
        return BlobWriter(self)

    def ingest(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store bytes content-addressed; return (sha256 hex, size)."""
        with self.blob_writer() as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.finish()

    def place_blob(self, temp_path: Path, checksum: str) -> str:
        """Rename a fully written, fsync'd temp file to its content address, durably."""
        target = self.blob_path(checksum)
        if target.exists():
            return checksum  # same bytes already stored: content addressing makes this a no-op
        fresh_dir = not target.parent.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp_path, target)  # atomic: a reader never sees half a blob
        # The rename is only durable once the directory entry is: fsync the directory (and the
        # parent when the shard directory itself is new).
        _fsync_dir(target.parent)
        if fresh_dir:
            _fsync_dir(self.objects_dir)
        return checksum

    def keep_bytes(self, data: bytes, name: str) -> None:
        """Keep bytes in the content store under ``name`` instead of their sha256: an S3
        object's checksum (its ETag), so that whatever reads blobs by an entry's checksum (the
        hooks runner, for action files) finds the bytes of an object kept in S3."""
        if not _BLOB_NAME.fullmatch(name):  # it becomes a file name
            raise BadRequestError(f"checksum {name[:80]!r}: not a name this server can keep")
        handle, temp = tempfile.mkstemp(dir=self.objects_dir, prefix=".keep-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            self.place_blob(Path(temp), name)
        finally:
            Path(temp).unlink(missing_ok=True)

    def open_blob(self, checksum: str) -> BinaryIO:
        """Open a blob for reading (the caller closes it)."""
        return self.blob_path(checksum).open("rb")

    def read_blob(self, checksum: str, start: int = 0, length: int | None = None) -> bytes:
        """Read (part of) a blob."""
        with self.open_blob(checksum) as source:
            source.seek(start)
            return source.read() if length is None else source.read(length)

    # -- repositories ---------------------------------------------------------------------------

    def create_repository(
        self, name: str, storage_namespace: str, *, default_branch: str = "main", committer: str
    ) -> RepositoryRecord:
        """Create a repository with its default branch on an initial empty commit."""
        if not REPOSITORY_ID.match(name):
            raise BadRequestError(f"repository name: invalid value: {name!r}")
        if not BRANCH_ID.match(default_branch):
            raise BadRequestError(f"default branch: invalid value: {default_branch!r}")
        if not storage_namespace:
            raise BadRequestError("storage_namespace is required")
        now = int(time.time())
        record = RepositoryRecord(name, storage_namespace, default_branch, now)
        namespace = storage_namespace.rstrip("/")
        with self.write_lock, self._db() as db:
            if self._repository_row(db, name) is not None:
                raise ConflictError("error creating repository: not unique")
            # lakeFS writes <namespace>/_lakefs/dummy when it creates a repository and refuses
            # a namespace where that object exists; deleting the repository leaves it behind.
            # This server writes nothing under namespaces, so it remembers them instead.
            used = db.execute(
                "SELECT 1 FROM storage_namespaces WHERE storage_namespace = ?", (namespace,)
            ).fetchone()
            if used is not None:
                raise BadRequestError(
                    "failed to create repository: found lakeFS objects in the storage "
                    f"(:{storage_namespace}) key(_lakefs/dummy): storage namespace already in use"
                )
            db.execute("INSERT INTO storage_namespaces VALUES (?, ?)", (namespace, name))
            db.execute(
                "INSERT INTO repositories VALUES (?, ?, ?, ?)",
                (name, storage_namespace, default_branch, now),
            )
            first = self._build_commit(
                parents=[],
                committer=committer,
                message=FIRST_COMMIT_MESSAGE,
                metadata={},
                tree={},
                creation_date=now,
                generation=1,
            )
            self._insert_commit(db, name, first, {})
            db.execute("INSERT INTO branches VALUES (?, ?, ?, 0)", (name, default_branch, first.id))
        return record

    def get_repository(self, name: str) -> RepositoryRecord:
        """Return a repository or raise NotFoundError."""
        with self._db() as db:
            row = self._repository_row(db, name)
        if row is None:
            raise NotFoundError(f"repository not found: {name}")
        return RepositoryRecord(*row)

    def list_repositories(
        self, *, prefix: str = "", after: str | None = None, amount: int | None = None
    ) -> Page[RepositoryRecord]:
        """List repositories by id."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM repositories ORDER BY id").fetchall()
        records = [RepositoryRecord(*row) for row in rows if row[0].startswith(prefix or "")]
        return paginate(records, key=lambda r: r.id, after=after, amount=amount)

    def delete_repository(self, name: str) -> None:
        """Delete a repository and all its refs (blobs stay: they are content-addressed)."""
        self.get_repository(name)
        with self.write_lock, self._db() as db:
            # Not storage_namespaces: a deleted repository's namespace stays used, as on lakeFS.
            tables = ("branches", "tags", "staging", "commits", "action_runs", "hook_runs")
            for table in (*tables, "settings"):
                db.execute(f"DELETE FROM {table} WHERE repo = ?", (name,))  # noqa: S608
            db.execute("DELETE FROM repositories WHERE id = ?", (name,))

    @staticmethod
    def _repository_row(db: sqlite3.Connection, name: str) -> tuple[str, str, str, int] | None:
        # The columns of SCHEMA's repositories table; sqlite3 itself returns untyped rows.
        row: tuple[str, str, str, int] | None = db.execute(
            "SELECT * FROM repositories WHERE id = ?", (name,)
        ).fetchone()
        return row

    # -- branches and refs ----------------------------------------------------------------------

    def prepare_branch(self, repo: str, name: str, source: str) -> str:
        """Check a new branch can be created; return the commit id ``source`` resolves to."""
        if not BRANCH_ID.match(name):
            raise BadRequestError(INVALID_BRANCH_ID)
        commit_id = self.resolve(repo, source).commit_id
        with self._db() as db:
            if self._branch_row(db, repo, name) is not None:
                raise ConflictError(f"branch {name!r} already exists: not unique")
        return commit_id

    def insert_branch(self, repo: str, name: str, commit_id: str) -> None:
        """Create a branch at a commit (checked again under the lock: a racer gets 409)."""
        with self.write_lock, self._db() as db:
            if self._branch_row(db, repo, name) is not None:
                raise ConflictError(f"branch {name!r} already exists: not unique")
            db.execute("INSERT INTO branches VALUES (?, ?, ?, 0)", (repo, name, commit_id))

    def create_branch(self, repo: str, name: str, source: str) -> str:
        """Create a branch at the commit ``source`` resolves to; return that commit id."""
        commit_id = self.prepare_branch(repo, name, source)
        self.insert_branch(repo, name, commit_id)
        return commit_id

    def get_branch(self, repo: str, name: str) -> str:
        """Return the head commit id of a branch."""
        self.get_repository(repo)
        with self._db() as db:
            row = self._branch_row(db, repo, name)
        if row is None:
            raise NotFoundError(f"branch not found: {name} (repository {repo})")
        return row[0]

    def list_branches(
        self, repo: str, *, prefix: str = "", after: str | None = None, amount: int | None = None
    ) -> Page[tuple[str, str]]:
        """List (name, commit id) pairs by name."""
        self.get_repository(repo)
        with self._db() as db:
            rows = db.execute(
                "SELECT name, commit_id FROM branches WHERE repo = ? ORDER BY name", (repo,)
            ).fetchall()
        pairs = [(n, c) for n, c in rows if n.startswith(prefix or "")]
        return paginate(pairs, key=lambda pair: pair[0], after=after, amount=amount)

    def delete_branch(self, repo: str, name: str) -> None:
        """Delete a branch and its staging area; the default branch cannot go (403)."""
        if self.get_repository(repo).default_branch == name:
            raise ForbiddenError(DELETE_DEFAULT_BRANCH)
        self.get_branch(repo, name)
        with self.write_lock, self._db() as db:
            db.execute("DELETE FROM branches WHERE repo = ? AND name = ?", (repo, name))
            db.execute("DELETE FROM staging WHERE repo = ? AND branch = ?", (repo, name))

    # -- tags -------------------------------------------------------------------------------------

    def prepare_tag(self, repo: str, tag_id: str, ref: str, *, force: bool = False) -> str:
        """Check a tag can be created; return the commit id ``ref`` resolves to.

        lakeFS's Catalog.CreateTag order: a valid id (400), not a branch's name (409), then
        the ref (a ``branch$`` is not a commit: 400)."""
        if not TAG_ID.match(tag_id):
            raise BadRequestError(INVALID_TAG_ID)
        with self._db() as db:
            if self._branch_row(db, repo, tag_id) is not None:
                raise ConflictError(f"branch name {tag_id}: conflict found")
        commit_id = self.dereference_commit(repo, ref)
        with self._db() as db:
            if not force and self._tag_row(db, repo, tag_id) is not None:
                raise ConflictError(f"tag {tag_id!r} already exists: not unique")
        return commit_id

    def insert_tag(self, repo: str, tag_id: str, commit_id: str, *, force: bool = False) -> None:
        """Point a tag at a commit; tags are immutable unless ``force``."""
        with self.write_lock, self._db() as db:
            if not force and self._tag_row(db, repo, tag_id) is not None:
                raise ConflictError(f"tag {tag_id!r} already exists: not unique")
            db.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", (repo, tag_id, commit_id))

    def get_tag(self, repo: str, tag_id: str) -> str:
        """Return the commit id a tag names."""
        self.get_repository(repo)
        with self._db() as db:
            row = self._tag_row(db, repo, tag_id)
        if row is None:
            raise NotFoundError(f"tag not found: {tag_id} (repository {repo})")
        return str(row[0])

    def list_tags(
        self, repo: str, *, prefix: str = "", after: str | None = None, amount: int | None = None
    ) -> Page[tuple[str, str]]:
        """List (tag id, commit id) pairs by id."""
        self.get_repository(repo)
        with self._db() as db:
            rows = db.execute(
                "SELECT id, commit_id FROM tags WHERE repo = ? ORDER BY id", (repo,)
            ).fetchall()
        pairs = [(t, c) for t, c in rows if t.startswith(prefix or "")]
        return paginate(pairs, key=lambda pair: pair[0], after=after, amount=amount)

    def delete_tag(self, repo: str, tag_id: str) -> None:
        """Delete a tag (its commit stays)."""
        self.get_tag(repo, tag_id)
        with self.write_lock, self._db() as db:
            db.execute("DELETE FROM tags WHERE repo = ? AND id = ?", (repo, tag_id))

    @staticmethod
    def _tag_row(db: sqlite3.Connection, repo: str, tag_id: str) -> tuple[str] | None:
        row: tuple[str] | None = db.execute(
            "SELECT commit_id FROM tags WHERE repo = ? AND id = ?", (repo, tag_id)
        ).fetchone()
        return row

    @staticmethod
    def _branch_row(db: sqlite3.Connection, repo: str, name: str) -> tuple[str, int] | None:
        row: tuple[str, int] | None = db.execute(
            "SELECT commit_id, staging_version FROM branches WHERE repo = ? AND name = ?",
            (repo, name),
        ).fetchone()
        return row

    @classmethod
    def _branch_state(cls, db: sqlite3.Connection, repo: str, name: str) -> tuple[str, int]:
        """Return a branch's (head commit id, staging version); the branch must exist."""
        row = cls._branch_row(db, repo, name)
        if row is None:
            raise NotFoundError(f"branch not found: {name} (repository {repo})")
        return row[0], row[1]

    def resolve(self, repo: str, ref: str) -> Resolved:
        """Resolve a lakeFS ref (pkg/graveler/ref ParseRef + ResolveRawRef): a full commit id,
        else a branch, a tag, a unique commit id prefix; then ``~N``/``^N`` walks, or one
        ``@`` (committed only) or ``$`` (staging) on a branch."""
        self.get_repository(repo)
        pieces = [match.group(0) for match in REF_PART.finditer(ref)]
        if not pieces or not pieces[0]:
            raise BadRequestError(INVALID_REF)
        resolved = self._resolve_base(repo, pieces[0], ref)
        modifiers = pieces[1:]
        for modifier in modifiers:
            kind, number = modifier[0], modifier[1:]
            if kind in "@$":
                if number or resolved.branch is None or len(modifiers) != 1:
                    raise BadRequestError(INVALID_REF)
                staging = kind == "$"
                return Resolved(resolved.commit_id, resolved.branch, staging, staging)
            if number and not number.isdigit():
                raise BadRequestError(f"could not parse modifier {modifier}: {INVALID_REF}")
            resolved = Resolved(self._walk(repo, resolved.commit_id, kind, number))
        return resolved

    def dereference_commit(self, repo: str, ref: str) -> str:
        """The commit a ref names, refusing ``branch$`` (graveler's dereferenceCommit)."""
        resolved = self.resolve(repo, ref)
        if resolved.staging_modifier:
            raise BadRequestError(f"reference '{ref}': {STAGING_NOT_A_COMMIT}")
        return resolved.commit_id

    def _resolve_base(self, repo: str, base: str, ref: str) -> Resolved:
        with self._db() as db:
            # A full commit id wins over a branch or tag of that name, as in lakeFS.
            if FULL_COMMIT_ID.fullmatch(base):
                row = db.execute(
                    "SELECT id FROM commits WHERE repo = ? AND id = ?", (repo, base.lower())
                ).fetchone()
                if row is not None:
                    return Resolved(row[0])
            branch = self._branch_row(db, repo, base)
            if branch is not None:
                return Resolved(branch[0], base, with_staging=True)
            tag = self._tag_row(db, repo, base)
            if tag is not None:
                return Resolved(tag[0])
            if COMMIT_ID_PREFIX.fullmatch(base):
                rows = db.execute(
                    "SELECT id FROM commits WHERE repo = ? AND id LIKE ?",
                    (repo, base.lower() + "%"),
                ).fetchall()
                if len(rows) == 1:
                    return Resolved(rows[0][0])
        raise NotFoundError(f"ref not found: {ref} (repository {repo})")

    def _walk(self, repo: str, commit_id: str, kind: str, number: str) -> str:
        count = int(number) if number else 1
        if kind == "~":
            for _ in range(count):
                parents = self.get_commit(repo, commit_id).parents
                if not parents:
                    raise NotFoundError(f"commit {commit_id} has no parent")
                commit_id = parents[0]
            return commit_id
        parents = self.get_commit(repo, commit_id).parents
        if count == 0:
            return commit_id
        if count > len(parents):
            raise NotFoundError(f"commit {commit_id} has no parent {count}")
        return parents[count - 1]

    # -- trees and objects ----------------------------------------------------------------------

    def tree(self, repo: str, ref: str) -> dict[str, ObjectEntry]:
        """The full path -> entry view of a ref (committed tree plus staging for a branch)."""
        resolved = self.resolve(repo, ref)
        committed = self._tree(self.get_commit(repo, resolved.commit_id).meta_range_id)
        if not (resolved.with_staging and resolved.branch):
            return committed
        return _overlay(committed, self._staging(repo, resolved.branch))

    def _commit_tree(self, repo: str, commit_id: str) -> dict[str, ObjectEntry]:
        return self._tree(self.get_commit(repo, commit_id).meta_range_id)

    def _tree(self, meta_range_id: str) -> dict[str, ObjectEntry]:
        with self._tree_cache_lock:
            cached = self._tree_cache.get(meta_range_id)
        if cached is not None:
            return cached
        with self._db() as db:
            row = db.execute("SELECT entries FROM trees WHERE id = ?", (meta_range_id,)).fetchone()
        raw = json.loads(row[0]) if row else {}
        tree = {path: ObjectEntry(**value) for path, value in raw.items()}
        with self._tree_cache_lock:
            if len(self._tree_cache) >= _TREE_CACHE_SIZE:
                self._tree_cache.pop(next(iter(self._tree_cache)))
            self._tree_cache[meta_range_id] = tree  # trees are immutable: caching is safe
        return tree

    def _staging(self, repo: str, branch: str) -> dict[str, ObjectEntry | None]:
        with self._db() as db:
            return self._staging_rows(db, repo, branch)

    @staticmethod
    def _staging_rows(
        db: sqlite3.Connection, repo: str, branch: str
    ) -> dict[str, ObjectEntry | None]:
        rows = db.execute(
            "SELECT path, entry FROM staging WHERE repo = ? AND branch = ?", (repo, branch)
        ).fetchall()
        return {path: _entry_from_json(raw) for path, raw in rows}

    def stat(self, repo: str, ref: str, path: str) -> ObjectEntry:
        """Return the entry of ``path`` at ``ref`` or raise NotFoundError."""
        validate_path(path)
        entry = self.tree(repo, ref).get(path)
        if entry is None:
            raise NotFoundError(f"object not found: {path} (repository {repo}, ref {ref})")
        return entry

    def list_objects(
        self,
        repo: str,
        ref: str,
        *,
        prefix: str = "",
        after: str | None = None,
        amount: int | None = None,
        delimiter: str = "",
    ) -> Page[tuple[str, ObjectEntry | None]]:
        """List ``(path, ObjectEntry | None)``; ``None`` marks a common prefix (a delimiter's)."""
        tree = self.tree(repo, ref)
        paths = sorted(p for p in tree if p.startswith(prefix or ""))
        rows: list[tuple[str, ObjectEntry | None]] = []
        seen_prefixes: set[str] = set()
        for path in paths:
            rest = path[len(prefix or "") :]
            if delimiter and delimiter in rest:
                common = (prefix or "") + rest.split(delimiter, 1)[0] + delimiter
                if common not in seen_prefixes:
                    seen_prefixes.add(common)
                    rows.append((common, None))
                continue
            rows.append((path, tree[path]))
        return paginate(rows, key=lambda row: row[0], after=after, amount=amount)

    def put_object(
        self, repo: str, branch: str, path: str, entry: ObjectEntry, *, if_absent: bool = False
    ) -> ObjectEntry:
        """Stage ``entry`` at ``path`` on ``branch``."""
        validate_path(path)
        with self.write_lock:
            self.get_branch(repo, branch)
            self.check_writable(repo, branch)
            if if_absent and path in self.tree(repo, branch):
                raise PreconditionFailedError(f"object exists: {path}")
            self._stage(repo, branch, {path: entry})
        return entry

    def delete_object(self, repo: str, branch: str, path: str) -> None:
        """Stage the removal of ``path`` on ``branch``."""
        validate_path(path)
        with self.write_lock:
            self.check_writable(repo, branch)
            self.stat(repo, branch, path)
            self._stage(repo, branch, {path: None})

    def _stage(self, repo: str, branch: str, changes: dict[str, ObjectEntry | None]) -> None:
        """Write staging rows; a removal of a path that is not committed just drops the row."""
        head = self.get_branch(repo, branch)
        committed = self._tree(self.get_commit(repo, head).meta_range_id)
        with self._db() as db:
            for path, entry in changes.items():
                if entry is None and path not in committed:
                    db.execute(
                        "DELETE FROM staging WHERE repo = ? AND branch = ? AND path = ?",
                        (repo, branch, path),
                    )
                    continue
                db.execute(
                    "INSERT OR REPLACE INTO staging VALUES (?, ?, ?, ?)",
                    (repo, branch, path, _entry_to_json(entry)),
                )
            db.execute(
                "UPDATE branches SET staging_version = staging_version + 1 "
                "WHERE repo = ? AND name = ?",
                (repo, branch),
            )

    # -- branch protection ----------------------------------------------------------------------

    def get_branch_protection(self, repo: str) -> tuple[list[str], str]:
        """The protected branch patterns and their ETag ("" while none were ever set), like
        lakeFS's ProtectionManager.GetRules."""
        self.get_repository(repo)
        with self._db() as db:
            row = db.execute(
                "SELECT value FROM settings WHERE repo = ? AND key = ?",
                (repo, PROTECTION_SETTING),
            ).fetchone()
        if row is None:
            return [], ""
        return list(json.loads(row[0])), hashlib.sha256(row[0].encode()).hexdigest()

    def set_branch_protection(
        self, repo: str, patterns: list[str], *, if_match: str | None = None
    ) -> None:
        """Replace the protected branch patterns; ``if_match`` as lakeFS's settings manager
        reads it: None sets unconditionally, "" only while none were ever set, else only if it
        is the current ETag (otherwise 412 "Precondition failed")."""
        value = json.dumps(sorted(set(patterns)))
        with self.write_lock:
            _, etag = self.get_branch_protection(repo)
            if if_match is not None and if_match != etag:
                raise PreconditionFailedError("Precondition failed")
            with self._db() as db:
                db.execute(
                    "INSERT OR REPLACE INTO settings VALUES (?, ?, ?)",
                    (repo, PROTECTION_SETTING, value),
                )

    def is_protected(self, repo: str, branch: str) -> bool:
        """Whether a protection pattern (a glob, like lakeFS's gobwas/glob) matches the branch.

        lakeFS blocks staging writes and commits on a protected branch, never merges into it."""
        patterns, _ = self.get_branch_protection(repo)
        return any(fnmatch.fnmatchcase(branch, pattern) for pattern in patterns)

    def check_writable(self, repo: str, branch: str) -> None:
        """Refuse a staging write to a protected branch (graveler.Set: 403)."""
        if self.is_protected(repo, branch):
            raise ForbiddenError(WRITE_TO_PROTECTED_BRANCH)

    # -- commits --------------------------------------------------------------------------------

    def get_commit(self, repo: str, ref: str) -> CommitRecord:
        """Return the commit a ref resolves to (any ref, like lakeFS's GetCommit)."""
        with self._db() as db:
            row = db.execute(
                "SELECT * FROM commits WHERE repo = ? AND id = ?", (repo, ref)
            ).fetchone()
        if row is None:
            commit_id = self.resolve(repo, ref).commit_id
            with self._db() as db:
                row = db.execute(
                    "SELECT * FROM commits WHERE repo = ? AND id = ?", (repo, commit_id)
                ).fetchone()
        if row is None:
            raise NotFoundError(f"commit not found: {ref} (repository {repo})")
        _, cid, parents, committer, message, date, meta_range, metadata, generation = row
        return CommitRecord(
            cid,
            json.loads(parents),
            committer,
            message,
            date,
            meta_range,
            json.loads(metadata),
            generation,
        )

    def prepare_commit(
        self,
        repo: str,
        branch: str,
        *,
        message: str,
        metadata: dict[str, str] | None,
        committer: str,
        allow_empty: bool = False,
        date: int | None = None,
    ) -> CommitDraft:
        """Compute the commit of a branch's staged changes without applying it."""
        if not message:
            raise BadRequestError("commit message is required")
        if self.is_protected(repo, branch):
            raise ForbiddenError(COMMIT_TO_PROTECTED_BRANCH)
        with self._db() as db:
            self.get_branch(repo, branch)
            head, _ = self._branch_state(db, repo, branch)
            staged = self._staging_rows(db, repo, branch)  # same snapshot as the head
        if not staged and not allow_empty:
            raise BadRequestError("commit: no changes")
        parent = self.get_commit(repo, head)
        tree = _overlay(self._tree(parent.meta_range_id), staged)
        commit = self._build_commit(
            parents=[head],
            committer=committer,
            message=message,
            metadata=metadata or {},
            tree=tree,
            creation_date=date or int(time.time()),
            generation=parent.generation + 1,
        )
        return CommitDraft(repo, branch, commit, tree, head, staged=staged)

    def apply_commit(self, draft: CommitDraft) -> CommitRecord:
        """Apply a draft in one transaction: add the commit, move the branch, clear its staging."""
        with self.write_lock, self._db() as db:
            self._check_unmoved(db, draft)
            self._insert_commit(db, draft.repo, draft.commit, draft.tree)
            db.execute(
                "UPDATE branches SET commit_id = ?, staging_version = staging_version + 1 "
                "WHERE repo = ? AND name = ?",
                (draft.commit.id, draft.repo, draft.branch),
            )
            self._clear_staged(db, draft)
        return draft.commit

    @staticmethod
    def _clear_staged(db: sqlite3.Connection, draft: CommitDraft) -> None:
        if draft.staged is None:  # a merge: what is staged now was staged after it started
            return
        for path, entry in draft.staged.items():
            # Only the row the commit took: a newer write to the same path stays staged.
            db.execute(
                "DELETE FROM staging WHERE repo = ? AND branch = ? AND path = ? AND entry IS ?",
                (draft.repo, draft.branch, path, _entry_to_json(entry)),
            )

    def _check_unmoved(self, db: sqlite3.Connection, draft: CommitDraft) -> None:
        row = self._branch_row(db, draft.repo, draft.branch)
        if row is None:
            raise NotFoundError(f"branch not found: {draft.branch} (repository {draft.repo})")
        if row[0] != draft.expected_head:
            raise BranchMovedError(f"branch {draft.branch} changed during the operation; retry")

    def _build_commit(
        self,
        *,
        parents: list[str],
        committer: str,
        message: str,
        metadata: dict[str, str],
        tree: dict[str, ObjectEntry],
        creation_date: int,
        generation: int,
    ) -> CommitRecord:
        meta_range_id = hashlib.sha256(
            _canonical({path: entry.as_dict() for path, entry in tree.items()})
        ).hexdigest()
        # The id hashes the same fields as lakeFS's Commit.Identity().
        commit_id = hashlib.sha256(
            _canonical(
                {
                    "kind": "commit:v1",
                    "committer": committer,
                    "message": message,
                    "meta_range_id": meta_range_id,
                    "creation_date": creation_date,
                    "metadata": metadata,
                    "parents": parents,
                }
            )
        ).hexdigest()
        return CommitRecord(
            commit_id,
            parents,
            committer,
            message,
            creation_date,
            meta_range_id,
            dict(metadata),
            generation,
        )

    def _insert_commit(
        self, db: sqlite3.Connection, repo: str, commit: CommitRecord, tree: dict[str, ObjectEntry]
    ) -> None:
        entries = json.dumps({path: entry.as_dict() for path, entry in tree.items()})
        db.execute("INSERT OR IGNORE INTO trees VALUES (?, ?)", (commit.meta_range_id, entries))
        db.execute(
            "INSERT OR IGNORE INTO commits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                repo,
                commit.id,
                json.dumps(commit.parents),
                commit.committer,
                commit.message,
                commit.creation_date,
                commit.meta_range_id,
                json.dumps(commit.metadata),
                commit.generation,
            ),
        )

    def log(
        self,
        repo: str,
        ref: str,
        *,
        after: str | None = None,
        amount: int | None = None,
        first_parent: bool = False,
        objects: list[str] | None = None,
        prefixes: list[str] | None = None,
        limit: bool = False,
        stop_at: str | None = None,
    ) -> Page[CommitRecord]:
        """Walk history from ``ref``, newest first; optionally only commits touching paths."""
        size = clamp_amount(amount)
        stop_id = self.resolve(repo, stop_at).commit_id if stop_at else None
        found: list[CommitRecord] = []
        skipping = bool(after)
        for commit in self._ancestry(repo, self.resolve(repo, ref).commit_id, first_parent):
            if skipping:
                skipping = commit.id != after
                continue
            if (objects or prefixes) and not self._touches(repo, commit, objects, prefixes):
                continue
            found.append(commit)
            if len(found) > size or commit.id == stop_id:
                break
        has_more = len(found) > size and not limit
        page = found[:size]
        return Page(page, has_more, page[-1].id if has_more else "", size)

    def _ancestry(self, repo: str, start: str, first_parent: bool) -> Iterator[CommitRecord]:
        """Commits reachable from ``start``, newest first (creation date, then generation)."""
        first = self.get_commit(repo, start)
        heap = [(-first.creation_date, -first.generation, first.id)]
        seen = {first.id}
        while heap:
            _, _, commit_id = heapq.heappop(heap)
            commit = self.get_commit(repo, commit_id)
            yield commit
            for parent_id in commit.parents[:1] if first_parent else commit.parents:
                if parent_id not in seen:
                    seen.add(parent_id)
                    parent = self.get_commit(repo, parent_id)
                    heapq.heappush(heap, (-parent.creation_date, -parent.generation, parent.id))

    def _touches(
        self,
        repo: str,
        commit: CommitRecord,
        objects: list[str] | None,
        prefixes: list[str] | None,
    ) -> bool:
        before = (
            self._tree(self.get_commit(repo, commit.parents[0]).meta_range_id)
            if commit.parents
            else {}
        )
        after = self._tree(commit.meta_range_id)
        changed = {d.path for d in diff_trees(before, after)}
        return any(p in changed for p in objects or []) or any(
            c.startswith(p) for p in prefixes or [] for c in changed
        )

    # -- diff and merge -------------------------------------------------------------------------

    def diff_refs(
        self,
        repo: str,
        left: str,
        right: str,
        *,
        prefix: str = "",
        diff_type: str = THREE_DOT,
    ) -> list[DiffRecord]:
        """lakeFS's DiffRefs: ``three_dot`` (its default) lists what merging ``right`` into
        ``left`` would change (``right``'s changes since their merge base, ``conflict`` where
        both sides changed a path differently); ``two_dot`` the changes turning ``left`` into
        ``right``.

        A ref reads committed data here, a branch's head commit included (graveler's Compare
        and Diff dereference commits); only ``branch$`` on the right of a two-dot diff adds the
        branch's staging area, and ``$`` anywhere else is refused.
        """
        if diff_type == TWO_DOT:
            left_tree = self._commit_tree(repo, self.dereference_commit(repo, left))
            resolved = self.resolve(repo, right)
            right_tree = self._commit_tree(repo, resolved.commit_id)
            if resolved.staging_modifier and resolved.branch:
                right_tree = _overlay(right_tree, self._staging(repo, resolved.branch))
            diffs = diff_trees(left_tree, right_tree)
        elif diff_type == THREE_DOT:
            source = self.dereference_commit(repo, right)
            dest = self.dereference_commit(repo, left)
            base = self.merge_base(repo, source, dest)
            diffs = compare_trees(
                base=self._commit_tree(repo, base),
                source=self._commit_tree(repo, source),
                dest=self._commit_tree(repo, dest),
            )
        else:
            raise BadRequestError(f"invalid diff type {diff_type!r}: want {TWO_DOT} or {THREE_DOT}")
        return [d for d in diffs if d.path.startswith(prefix or "")]

    def diff_uncommitted(self, repo: str, branch: str, *, prefix: str = "") -> list[DiffRecord]:
        """A branch's staged changes against its head commit."""
        with self._db() as db:
            self.get_branch(repo, branch)
            head, _ = self._branch_state(db, repo, branch)
            staged = self._staging_rows(db, repo, branch)  # same snapshot as the head
        committed = self._commit_tree(repo, head)
        diffs = diff_trees(committed, _overlay(committed, staged))
        return [d for d in diffs if d.path.startswith(prefix or "")]

    def merge_base(self, repo: str, left: str, right: str) -> str:
        """The best common ancestor: the common one with the highest generation."""
        left_ids = {c.id for c in self._ancestry(repo, left, first_parent=False)}
        common = [c for c in self._ancestry(repo, right, first_parent=False) if c.id in left_ids]
        if not common:
            raise NotFoundError("no merge base")
        return max(common, key=lambda c: (c.generation, c.creation_date)).id

    def check_clean(self, repo: str, branch: str) -> None:
        """Refuse a branch with uncommitted changes, as lakeFS refuses to merge into one
        (graveler's prepareForCommitIDUpdate: ErrDirtyBranch, 400)."""
        if self.diff_uncommitted(repo, branch):
            raise BadRequestError(DIRTY_BRANCH)

    def prepare_merge(
        self,
        repo: str,
        source_ref: str,
        destination: str,
        *,
        message: str | None,
        metadata: dict[str, str] | None,
        committer: str,
        strategy: str | None = None,
        allow_empty: bool = False,
        squash: bool = False,
    ) -> tuple[CommitDraft, str]:
        """Compute the merge commit of ``source_ref`` into branch ``destination`` at its head now.

        Returns the draft and the source commit id; the caller checks the destination is clean
        first (:meth:`check_clean`) and applies the draft, which fails with
        :class:`BranchMovedError` if the destination moved meanwhile (then it computes again,
        as graveler's Merge does inside ``retryBranchUpdate``). Like lakeFS: the source is
        committed data only (its staging area is ignored); a source whose tree is its merge
        base's is "no changes" unless ``allow_empty`` (lakeFS's ``force`` allows it too); a
        ``squash`` merge commit has the destination's head as its only parent; the commit's
        metadata carries ``.lakefs.merge.strategy``. Three-way per path: changed on one side
        only takes that side; changed identically on both is fine; differently is a conflict
        unless a strategy picks a side.
        """
        if (strategy or "") not in MERGE_STRATEGIES:
            raise BadRequestError("invalid merge strategy")
        prefix = f"update branch {destination}"
        with self._db() as db:
            self.get_branch(repo, destination)
            head, _ = self._branch_state(db, repo, destination)
        try:
            source_commit = self.dereference_commit(repo, source_ref)
        except LakeFSError as exc:
            raise type(exc)(f"{prefix}: get commit by ref {source_ref}: {exc}") from exc
        base = self.merge_base(repo, source_commit, head)
        source, dest = self.get_commit(repo, source_commit), self.get_commit(repo, head)
        # committedManager.Merge: "no changes" is the source's tree being its merge base's.
        if source.meta_range_id == self.get_commit(repo, base).meta_range_id and not allow_empty:
            raise BadRequestError(f"{prefix}: no changes")
        try:
            tree = self._merge_trees(repo, base, source_commit, head, strategy=strategy)
        except MergeConflictError as exc:
            raise MergeConflictError(f"{prefix}: {exc}") from exc
        commit = self._build_commit(
            parents=[head] if squash else [head, source_commit],
            committer=committer,
            message=message or f"Merge '{source_ref}' into '{destination}'",
            metadata={**(metadata or {}), MERGE_STRATEGY_KEY: MERGE_STRATEGIES[strategy or ""]},
            tree=tree,
            creation_date=int(time.time()),
            generation=max(dest.generation, source.generation) + 1,
        )
        # Only the head is the predicate: writes staged on the destination while the merge runs
        # stay staged (lakeFS seals the staging token it checked empty and opens a new one).
        return CommitDraft(repo, destination, commit, tree, head), source_commit

    def _merge_trees(
        self, repo: str, base: str, source: str, dest: str, *, strategy: str | None
    ) -> dict[str, ObjectEntry]:
        trees = [self._tree(self.get_commit(repo, c).meta_range_id) for c in (base, source, dest)]
        base_tree, source_tree, dest_tree = trees
        merged: dict[str, ObjectEntry] = {}
        conflicts: list[str] = []
        for path in sorted(set(base_tree) | set(source_tree) | set(dest_tree)):
            b, s, d = (tree.get(path) for tree in trees)
            ident = [None if e is None else e.identity() for e in (b, s, d)]
            if ident[1] == ident[0] or ident[1] == ident[2]:
                chosen = d
            elif ident[2] == ident[0] or strategy == "source-wins":
                chosen = s
            elif strategy == "dest-wins":
                chosen = d
            else:
                conflicts.append(path)
                continue
            if chosen is not None:
                merged[path] = chosen
        if conflicts:
            shown = ", ".join(conflicts[:10]) + (" ..." if len(conflicts) > 10 else "")
            raise MergeConflictError(f"conflict found: {shown}")
        return merged

    # -- action runs ----------------------------------------------------------------------------

    def save_action_run(self, repo: str, run: ActionRunRecord, hooks: list[HookRunRecord]) -> None:
        """Record an action run and its hook runs."""
        with self.write_lock, self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO action_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    repo,
                    run.run_id,
                    run.branch,
                    run.commit_id,
                    run.source_ref,
                    run.event_type,
                    run.start_time,
                    run.end_time,
                    run.status,
                ),
            )
            for hook in hooks:
                db.execute(
                    "INSERT OR REPLACE INTO hook_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        repo,
                        run.run_id,
                        hook.hook_run_id,
                        hook.action,
                        hook.hook_id,
                        hook.start_time,
                        hook.end_time,
                        hook.status,
                        hook.output,
                    ),
                )

    def set_run_commit(self, repo: str, run_id: str, commit_id: str) -> None:
        """Attach the resulting commit to a pre-* run (lakeFS's UpdateCommitID)."""
        with self.write_lock, self._db() as db:
            db.execute(
                "UPDATE action_runs SET commit_id = ? WHERE repo = ? AND run_id = ?",
                (commit_id, repo, run_id),
            )

    def list_action_runs(
        self,
        repo: str,
        *,
        branch: str | None = None,
        commit: str | None = None,
        after: str | None = None,
        amount: int | None = None,
    ) -> Page[ActionRunRecord]:
        """Action runs, newest first (run ids sort descending by time, like lakeFS's)."""
        self.get_repository(repo)
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM action_runs WHERE repo = ? ORDER BY run_id", (repo,)
            ).fetchall()
        runs = [ActionRunRecord(*row[1:]) for row in rows]
        runs = [r for r in runs if (not branch or r.branch == branch)]
        runs = [r for r in runs if (not commit or r.commit_id == commit)]
        return paginate(runs, key=lambda r: r.run_id, after=after, amount=amount)

    def get_action_run(self, repo: str, run_id: str) -> ActionRunRecord:
        """One action run."""
        with self._db() as db:
            row = db.execute(
                "SELECT * FROM action_runs WHERE repo = ? AND run_id = ?", (repo, run_id)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"action run not found: {run_id} (repository {repo})")
        return ActionRunRecord(*row[1:])

    def list_hook_runs(
        self, repo: str, run_id: str, *, after: str | None = None, amount: int | None = None
    ) -> Page[HookRunRecord]:
        """The hook runs of an action run, in execution order."""
        self.get_action_run(repo, run_id)
        with self._db() as db:
            rows = db.execute(
                "SELECT hook_run_id, action, hook_id, start_time, end_time, status, output "
                "FROM hook_runs WHERE repo = ? AND run_id = ? ORDER BY hook_run_id",
                (repo, run_id),
            ).fetchall()
        hooks = [HookRunRecord(*row) for row in rows]
        return paginate(hooks, key=lambda h: h.hook_run_id, after=after, amount=amount)


def diff_trees(left: dict[str, ObjectEntry], right: dict[str, ObjectEntry]) -> list[DiffRecord]:
    """Paths added, removed or changed from ``left`` to ``right``, sorted."""
    diffs: list[DiffRecord] = []
    for path in sorted(set(left) | set(right)):
        before, after = left.get(path), right.get(path)
        if before is None and after is not None:
            diffs.append(DiffRecord("added", path, after.size))
        elif after is None and before is not None:
            diffs.append(DiffRecord("removed", path, before.size))
        elif before is not None and after is not None and before.identity() != after.identity():
            diffs.append(DiffRecord("changed", path, after.size))
    return diffs


def compare_trees(
    *, base: dict[str, ObjectEntry], source: dict[str, ObjectEntry], dest: dict[str, ObjectEntry]
) -> list[DiffRecord]:
    """What merging ``source`` into ``dest`` would change on ``dest``, sorted: lakeFS's
    three-dot diff (committed.compareIterator). A path changed only on the source is listed
    as the change the merge applies; changed only on the destination is not listed; changed
    differently on both is ``conflict``."""
    diffs: list[DiffRecord] = []
    for change in diff_trees(dest, source):
        before, after, ancestor = (t.get(change.path) for t in (dest, source, base))
        ancestor_id = None if ancestor is None else ancestor.identity()
        size = (after or before or ancestor or ObjectEntry("", 0, 0)).size
        if change.type == "added":  # on the source, not on the destination
            if ancestor is None:
                diffs.append(change)
            elif after is not None and ancestor_id != after.identity():
                diffs.append(DiffRecord("conflict", change.path, size))  # removed vs changed
        elif change.type == "changed":
            if ancestor is None or (before is not None and ancestor_id != before.identity()):
                if after is not None and ancestor_id != after.identity():
                    diffs.append(DiffRecord("conflict", change.path, size))
            else:
                diffs.append(change)  # the destination still has the base: the source changed it
        elif ancestor is not None:  # removed on the source
            if before is not None and ancestor_id == before.identity():
                diffs.append(change)
            else:
                diffs.append(DiffRecord("conflict", change.path, size))  # changed vs removed
    return diffs


def branch_matches(patterns: list[str] | None, branch: str) -> bool:
    """lakeFS's branch filter: no patterns match all, else any glob (Go path.Match) must."""
    if not patterns:
        return True
    # Go's path.Match negates classes with "[^...]", Python's fnmatch with "[!...]".
    return any(fnmatch.fnmatchcase(branch, p.replace("[^", "[!")) for p in patterns)
