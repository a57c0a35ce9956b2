"""Persistent storage of the lakeFS-compatible local server.

Object bytes live content-addressed (sha256) under ``<data_dir>/objects``; everything else
(repositories, branches, staged changes, commits, trees, action runs) lives in one SQLite file.
The model follows lakeFS: a branch points at a commit and carries a staging area of uncommitted
changes (``None`` = tombstone); a commit holds its parents, metadata and a full tree snapshot
(``path -> Entry``) identified by ``meta_range_id``; commit ids are sha256 of the commit content.

Writes are serialised with one lock; every call opens its own SQLite connection, so the store is
safe to share between the server's worker threads.
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
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
CREATE TABLE IF NOT EXISTS trees (id TEXT PRIMARY KEY, entries TEXT NOT NULL);
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
BRANCH_ID = re.compile(r"^\w[-\w]*$")
REF_MODIFIER = re.compile(r"([~^])(\d*)|(@)|(\$)")
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


@dataclass(frozen=True)
class Entry:
    """One object in a tree: what lakeFS keeps per path."""

    checksum: str
    size: int
    mtime: int
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)

    def identity(self) -> tuple[str, str, str]:
        """What makes two entries "the same" for diff and merge (lakeFS compares identities)."""
        return self.checksum, self.content_type, json.dumps(self.metadata, sort_keys=True)


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
    """A ref expression resolved to a commit, plus whether a branch's staging area applies."""

    commit_id: str
    branch: str | None = None
    with_staging: bool = False


@dataclass(frozen=True)
class CommitDraft:
    """A commit computed but not applied; applying checks the branch did not move meanwhile."""

    repo: str
    branch: str
    commit: CommitRecord
    tree: dict[str, Entry]
    expected_head: str
    expected_staging_version: int


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


@dataclass(frozen=True)
class Page:
    """A page of a listing, lakeFS-style."""

    results: list[Any]
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


def _entry_to_json(entry: Entry | None) -> str | None:
    return None if entry is None else json.dumps(asdict(entry), sort_keys=True)


def _entry_from_json(raw: str | None) -> Entry | None:
    return None if raw is None else Entry(**json.loads(raw))


def clamp_amount(amount: int | None) -> int:
    """lakeFS's page size rules: default 100, at most 1000."""
    if amount is None or amount < 0:
        return DEFAULT_AMOUNT
    return min(amount, MAX_AMOUNT)


def paginate(items: list[Any], *, key: Any, after: str | None, amount: int | None) -> Page:
    """Cut a sorted listing after ``after`` into one page of ``amount`` items."""
    size = clamp_amount(amount)
    start = [item for item in items if not after or key(item) > after]
    page = start[:size]
    has_more = len(start) > size
    next_offset = key(page[-1]) if has_more and page else ""
    return Page(page, has_more, next_offset, size)


class Store:
    """Repositories, branches, commits and objects of the local server."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.objects_dir = self.data_dir / "objects"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "lakefs.sqlite3"
        self.write_lock = threading.RLock()
        self._tree_cache: dict[str, dict[str, Entry]] = {}
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    # -- plumbing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.db_path, timeout=30)
        # WAL + NORMAL: durable across process crashes, and much cheaper than a full sync per write.
        connection.execute("PRAGMA synchronous=NORMAL")
        try:
            with connection:  # commits on success, rolls back on error
                yield connection
        finally:
            connection.close()

    # -- blobs ----------------------------------------------------------------------------------

    def blob_path(self, checksum: str) -> Path:
        """Where the bytes with this sha256 live."""
        return self.objects_dir / checksum[:2] / checksum[2:]

    def ingest(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store bytes content-addressed; return (sha256 hex, size)."""
        digest = hashlib.sha256()
        size = 0
        handle, temp_name = tempfile.mkstemp(dir=self.objects_dir, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            return self._place_blob(Path(temp_name), digest.hexdigest()), size
        finally:
            Path(temp_name).unlink(missing_ok=True)

    def ingest_file(self, temp_path: Path) -> tuple[str, int]:
        """Move an already written temporary file into the content store."""
        digest = hashlib.sha256()
        with temp_path.open("rb") as source:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                digest.update(chunk)
        size = temp_path.stat().st_size
        return self._place_blob(temp_path, digest.hexdigest()), size

    def _place_blob(self, temp_path: Path, checksum: str) -> str:
        target = self.blob_path(checksum)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp_path, target)  # atomic: a reader never sees half a blob
        return checksum

    def read_blob(self, checksum: str, start: int = 0, length: int | None = None) -> bytes:
        """Read (part of) a blob."""
        with self.blob_path(checksum).open("rb") as source:
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
        with self.write_lock, self._db() as db:
            if self._repository_row(db, name) is not None:
                raise ConflictError(f"repository {name!r} already exists: not unique")
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
    ) -> Page:
        """List repositories by id."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM repositories ORDER BY id").fetchall()
        records = [RepositoryRecord(*row) for row in rows if row[0].startswith(prefix or "")]
        return paginate(records, key=lambda r: r.id, after=after, amount=amount)

    def delete_repository(self, name: str) -> None:
        """Delete a repository and all its refs (blobs stay: they are content-addressed)."""
        self.get_repository(name)
        with self.write_lock, self._db() as db:
            for table in ("branches", "staging", "commits", "action_runs", "hook_runs"):
                db.execute(f"DELETE FROM {table} WHERE repo = ?", (name,))  # noqa: S608
            db.execute("DELETE FROM repositories WHERE id = ?", (name,))

    @staticmethod
    def _repository_row(db: sqlite3.Connection, name: str) -> tuple[Any, ...] | None:
        return db.execute("SELECT * FROM repositories WHERE id = ?", (name,)).fetchone()

    # -- branches and refs ----------------------------------------------------------------------

    def create_branch(self, repo: str, name: str, source: str) -> str:
        """Create a branch at the commit ``source`` resolves to; return that commit id."""
        if not BRANCH_ID.match(name):
            raise BadRequestError(f"branch name: invalid value: {name!r}")
        with self.write_lock:
            commit_id = self.resolve(repo, source).commit_id
            with self._db() as db:
                if self._branch_row(db, repo, name) is not None:
                    raise ConflictError(f"branch {name!r} already exists: not unique")
                db.execute("INSERT INTO branches VALUES (?, ?, ?, 0)", (repo, name, commit_id))
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
    ) -> Page:
        """List (name, commit id) pairs by name."""
        self.get_repository(repo)
        with self._db() as db:
            rows = db.execute(
                "SELECT name, commit_id FROM branches WHERE repo = ? ORDER BY name", (repo,)
            ).fetchall()
        pairs = [(n, c) for n, c in rows if n.startswith(prefix or "")]
        return paginate(pairs, key=lambda pair: pair[0], after=after, amount=amount)

    def delete_branch(self, repo: str, name: str) -> None:
        """Delete a branch and its staging area; the default branch cannot go."""
        if self.get_repository(repo).default_branch == name:
            raise BadRequestError(f"cannot delete repository default branch: {name}")
        self.get_branch(repo, name)
        with self.write_lock, self._db() as db:
            db.execute("DELETE FROM branches WHERE repo = ? AND name = ?", (repo, name))
            db.execute("DELETE FROM staging WHERE repo = ? AND branch = ?", (repo, name))

    @staticmethod
    def _branch_row(db: sqlite3.Connection, repo: str, name: str) -> tuple[Any, ...] | None:
        return db.execute(
            "SELECT commit_id, staging_version FROM branches WHERE repo = ? AND name = ?",
            (repo, name),
        ).fetchone()

    @classmethod
    def _branch_state(cls, db: sqlite3.Connection, repo: str, name: str) -> tuple[str, int]:
        """Return a branch's (head commit id, staging version); the branch must exist."""
        row = cls._branch_row(db, repo, name)
        if row is None:
            raise NotFoundError(f"branch not found: {name} (repository {repo})")
        return row[0], row[1]

    def resolve(self, repo: str, ref: str) -> Resolved:
        """Resolve a lakeFS ref: branch, commit id (or unique prefix), ``@``, ``~N``, ``^N``."""
        self.get_repository(repo)
        match = re.search(r"[~^@$]", ref)
        base, modifiers = (ref[: match.start()], ref[match.start() :]) if match else (ref, "")
        resolved = self._resolve_base(repo, base, ref)
        for tilde_or_caret, number, at, _dollar in REF_MODIFIER.findall(modifiers):
            if at:  # "branch@": committed data only
                resolved = Resolved(resolved.commit_id, resolved.branch, with_staging=False)
            elif tilde_or_caret:
                resolved = Resolved(self._walk(repo, resolved.commit_id, tilde_or_caret, number))
        if REF_MODIFIER.sub("", modifiers):
            raise BadRequestError(f"invalid ref expression: {ref}")
        return resolved

    def _resolve_base(self, repo: str, base: str, ref: str) -> Resolved:
        with self._db() as db:
            branch = self._branch_row(db, repo, base)
            if branch is not None:
                return Resolved(branch[0], base, with_staging=True)
            if re.fullmatch(r"[0-9a-f]{6,64}", base):
                rows = db.execute(
                    "SELECT id FROM commits WHERE repo = ? AND id LIKE ?", (repo, base + "%")
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

    def tree(self, repo: str, ref: str) -> dict[str, Entry]:
        """The full path -> entry view of a ref (committed tree plus staging for a branch)."""
        resolved = self.resolve(repo, ref)
        committed = self._tree(self.get_commit(repo, resolved.commit_id).meta_range_id)
        if not (resolved.with_staging and resolved.branch):
            return committed
        view = dict(committed)
        for path, entry in self._staging(repo, resolved.branch).items():
            if entry is None:
                view.pop(path, None)
            else:
                view[path] = entry
        return view

    def _tree(self, meta_range_id: str) -> dict[str, Entry]:
        cached = self._tree_cache.get(meta_range_id)
        if cached is not None:
            return cached
        with self._db() as db:
            row = db.execute("SELECT entries FROM trees WHERE id = ?", (meta_range_id,)).fetchone()
        raw = json.loads(row[0]) if row else {}
        tree = {path: Entry(**value) for path, value in raw.items()}
        if len(self._tree_cache) >= _TREE_CACHE_SIZE:
            self._tree_cache.pop(next(iter(self._tree_cache)))
        self._tree_cache[meta_range_id] = tree  # trees are immutable: caching is safe
        return tree

    def _staging(self, repo: str, branch: str) -> dict[str, Entry | None]:
        with self._db() as db:
            rows = db.execute(
                "SELECT path, entry FROM staging WHERE repo = ? AND branch = ?", (repo, branch)
            ).fetchall()
        return {path: _entry_from_json(raw) for path, raw in rows}

    def stat(self, repo: str, ref: str, path: str) -> Entry:
        """Return the entry of ``path`` at ``ref`` or raise NotFoundError."""
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
    ) -> Page:
        """List ``(path, Entry | None)``; ``None`` marks a common prefix (with a delimiter)."""
        tree = self.tree(repo, ref)
        paths = sorted(p for p in tree if p.startswith(prefix or ""))
        rows: list[tuple[str, Entry | None]] = []
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
        self, repo: str, branch: str, path: str, entry: Entry, *, if_absent: bool = False
    ) -> Entry:
        """Stage ``entry`` at ``path`` on ``branch``."""
        if not path:
            raise BadRequestError("path is required")
        with self.write_lock:
            self.get_branch(repo, branch)
            if if_absent and path in self.tree(repo, branch):
                raise PreconditionFailedError(f"object exists: {path}")
            self._stage(repo, branch, {path: entry})
        return entry

    def delete_object(self, repo: str, branch: str, path: str) -> None:
        """Stage the removal of ``path`` on ``branch``."""
        with self.write_lock:
            self.stat(repo, branch, path)
            self._stage(repo, branch, {path: None})

    def _stage(self, repo: str, branch: str, changes: dict[str, Entry | None]) -> None:
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
        with self._db() as db:
            self.get_branch(repo, branch)
            head, staging_version = self._branch_state(db, repo, branch)
        staged = self._staging(repo, branch)
        if not staged and not allow_empty:
            raise BadRequestError("commit: no changes")
        parent = self.get_commit(repo, head)
        tree = self.tree(repo, branch)
        commit = self._build_commit(
            parents=[head],
            committer=committer,
            message=message,
            metadata=metadata or {},
            tree=tree,
            creation_date=date or int(time.time()),
            generation=parent.generation + 1,
        )
        return CommitDraft(repo, branch, commit, tree, head, staging_version)

    def apply_commit(self, draft: CommitDraft) -> CommitRecord:
        """Apply a commit draft: move the branch and clear its staging area."""
        with self.write_lock:
            self._check_unmoved(draft)
            with self._db() as db:
                self._insert_commit(db, draft.repo, draft.commit, draft.tree)
                db.execute(
                    "UPDATE branches SET commit_id = ?, staging_version = staging_version + 1 "
                    "WHERE repo = ? AND name = ?",
                    (draft.commit.id, draft.repo, draft.branch),
                )
                db.execute(
                    "DELETE FROM staging WHERE repo = ? AND branch = ?", (draft.repo, draft.branch)
                )
        return draft.commit

    def _check_unmoved(self, draft: CommitDraft) -> None:
        with self._db() as db:
            row = self._branch_row(db, draft.repo, draft.branch)
        if row is None:
            raise NotFoundError(f"branch not found: {draft.branch} (repository {draft.repo})")
        if tuple(row) != (draft.expected_head, draft.expected_staging_version):
            raise ConflictError(f"branch {draft.branch} changed during the operation; retry")

    def _build_commit(
        self,
        *,
        parents: list[str],
        committer: str,
        message: str,
        metadata: dict[str, str],
        tree: dict[str, Entry],
        creation_date: int,
        generation: int,
    ) -> CommitRecord:
        meta_range_id = hashlib.sha256(
            _canonical({path: asdict(entry) for path, entry in tree.items()})
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
        self, db: sqlite3.Connection, repo: str, commit: CommitRecord, tree: dict[str, Entry]
    ) -> None:
        entries = json.dumps({path: asdict(entry) for path, entry in tree.items()})
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
    ) -> Page:
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

    def diff_refs(self, repo: str, left: str, right: str, *, prefix: str = "") -> list[DiffRecord]:
        """Changes that turn ``left`` into ``right``."""
        diffs = diff_trees(self.tree(repo, left), self.tree(repo, right))
        return [d for d in diffs if d.path.startswith(prefix or "")]

    def diff_uncommitted(self, repo: str, branch: str, *, prefix: str = "") -> list[DiffRecord]:
        """A branch's staged changes against its head commit."""
        head = self.get_branch(repo, branch)
        return self.diff_refs(repo, head, branch, prefix=prefix)

    def merge_base(self, repo: str, left: str, right: str) -> str:
        """The best common ancestor: the common one with the highest generation."""
        left_ids = {c.id for c in self._ancestry(repo, left, first_parent=False)}
        common = [c for c in self._ancestry(repo, right, first_parent=False) if c.id in left_ids]
        if not common:
            raise NotFoundError("no common ancestor")
        return max(common, key=lambda c: (c.generation, c.creation_date)).id

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
    ) -> tuple[CommitDraft, str]:
        """Compute the merge commit of ``source_ref`` into branch ``destination``.

        Returns the draft and the source commit id. Three-way: a path changed on one side only
        takes that side; changed identically on both sides is fine; differently is a conflict.
        """
        source = self.resolve(repo, source_ref)
        if source.with_staging and self._staging(repo, source.branch or ""):
            raise BadRequestError(f"source branch {source.branch} has uncommitted changes")
        with self._db() as db:
            self.get_branch(repo, destination)
            head, staging_version = self._branch_state(db, repo, destination)
        if self._staging(repo, destination):
            raise BadRequestError(f"destination branch {destination} has uncommitted changes")
        base = self.merge_base(repo, source.commit_id, head)
        tree = self._merge_trees(repo, base, source.commit_id, head, strategy=strategy)
        dest_tree = self._tree(self.get_commit(repo, head).meta_range_id)
        if not allow_empty and not diff_trees(dest_tree, tree):
            raise BadRequestError("merge: no changes")
        generation = max(self.get_commit(repo, c).generation for c in (head, source.commit_id))
        commit = self._build_commit(
            parents=[head, source.commit_id],
            committer=committer,
            message=message or f"Merge '{source_ref}' into '{destination}'",
            metadata=metadata or {},
            tree=tree,
            creation_date=int(time.time()),
            generation=generation + 1,
        )
        return CommitDraft(repo, destination, commit, tree, head, staging_version), source.commit_id

    def _merge_trees(
        self, repo: str, base: str, source: str, dest: str, *, strategy: str | None
    ) -> dict[str, Entry]:
        trees = [self._tree(self.get_commit(repo, c).meta_range_id) for c in (base, source, dest)]
        base_tree, source_tree, dest_tree = trees
        merged: dict[str, Entry] = {}
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
            raise ConflictError(f"conflict found: {shown}")
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
    ) -> Page:
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
    ) -> Page:
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


def diff_trees(left: dict[str, Entry], right: dict[str, Entry]) -> list[DiffRecord]:
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


def branch_matches(patterns: list[str] | None, branch: str) -> bool:
    """lakeFS's branch filter: no patterns match all, else any glob (Go path.Match) must."""
    if not patterns:
        return True
    # Go's path.Match negates classes with "[^...]", Python's fnmatch with "[!...]".
    return any(fnmatch.fnmatchcase(branch, p.replace("[^", "[!")) for p in patterns)
