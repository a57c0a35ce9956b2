"""Every read and write of versioned data, through the official lakeFS SDK.

The same functions work against a real lakeFS and the built-in local server, because both speak
the lakeFS REST API; nothing here knows which one it talks to.
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

import lakefs
import pandas as pd
from lakefs.exceptions import (
    LakeFSException,
    NotFoundException,
    ServerException,
    api_exception_handler,
)
from lakefs.models import ObjectInfo
from lakefs.object import WriteableObject

from lakeloop.events import SKIP_TRAINING_KEY
from lakeloop.ingest import SourceTable, read_csv
from lakeloop.settings import Settings

ACTIONS_DIR = "_lakefs_actions/"
DESCRIPTION_FILE = "_description.yaml"
"""The dataset description a batch was ingested with, stored beside its tables."""
REJECTION_PATH = "_lakeloop/rejection.json"
TABLE_SUFFIXES = (".parquet", ".csv")
_CHUNK = 1 << 20
# lakeFS answers 412 Precondition Failed when a pre-* hook blocks an operation; a hook it cannot
# even load or configure (a missing LAKEFSACTION_* variable, an invalid action file) is a 500
# naming the aborted hook run (lakeFS >= 1.60: pkg/api/controller.go, default case).
HOOK_BLOCKED = 412
# lakeFS refuses writes and commits to a protected branch with 403 (branch protection rules).
FORBIDDEN = 403
HOOK_ABORTED = "hook aborted, run id '"
_RUN_ID = re.compile(r"hook aborted, run id '([^']+)'")
_MISSING_VARIABLE = re.compile(r"(\w+) not found: missing env var")
# A lakeFS branch id is ``^\w[-\w]*$`` with Go's ASCII ``\w`` (pkg/validator/validate.go).
_NOT_IN_BRANCH_ID = re.compile(r"[^0-9A-Za-z_-]+")
BATCH_NAME_LENGTH = 40

# What callers catch: every error the lakeFS SDK raises; a missing repository or ref.
LakeFSError = LakeFSException
NotFoundError = NotFoundException


class HookConfigurationError(LakeFSException):
    """lakeFS could not run the repository's actions at all (its own configuration, not the data):
    the operation was refused and nothing was judged. The message says what lakeFS said."""


def batch_name(text: str) -> str:
    """A name lakeFS accepts inside a branch id: accents folded to ASCII (``données`` becomes
    ``donnees``), anything else outside ``[A-Za-z0-9_-]`` a dash, at most 40 characters."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    cleaned = _NOT_IN_BRANCH_ID.sub("-", folded.lower()).strip("-")
    return cleaned[:BATCH_NAME_LENGTH].strip("-") or "batch"


def connect(settings: Settings) -> lakefs.Client:
    """A lakeFS client for the configured server."""
    return lakefs.Client(
        host=settings.lakefs_endpoint,
        username=settings.lakefs.access_key_id,
        password=settings.lakefs_secret(),
    )


def ensure_repository(client: lakefs.Client, settings: Settings) -> lakefs.Repository:
    """Create the repository (idempotent) with the production branch as its default."""
    repository = lakefs.Repository(settings.lakefs.repository, client=client)
    return repository.create(
        storage_namespace=settings.lakefs.storage_namespace
        or f"local://{settings.lakefs.repository}",
        default_branch=settings.lakefs.branch,
        exist_ok=True,
    )


def render_actions(settings: Settings) -> dict[str, str]:
    """The action files of ``deployments/lakefs_actions/``, filled in for these settings, keyed by
    their path in the repository. Secrets stay lakeFS env references, never values in the file."""
    rendered = {}
    for entry in sorted(resources.files("deployments.lakefs_actions").iterdir(), key=str):
        if entry.name.endswith((".yaml", ".yml")):
            text = (
                entry.read_text()
                .replace("${GATEWAY_URL}", settings.gateway.url)
                .replace("${BRANCH}", settings.lakefs.branch)
            )
            rendered[ACTIONS_DIR + entry.name] = text
    return rendered


def install_actions(client: lakefs.Client, settings: Settings) -> str | None:
    """Commit the action files to the production branch where they differ; returns the commit id,
    or ``None`` when every file was already in place. The commit does not trigger training.
    Where the production branch is protected (lakeFS refuses direct writes with 403), the files
    go through a branch and a merge, which branch protection allows."""
    repository = lakefs.Repository(settings.lakefs.repository, client=client)
    main = repository.branch(settings.lakefs.branch)
    wanted = {
        path: text
        for path, text in render_actions(settings).items()
        if _read_text(main.object(path)) != text
    }
    if not wanted:
        return None
    metadata = {"lakeloop.kind": "actions", SKIP_TRAINING_KEY: "true"}
    try:
        _write_texts(main, wanted)
    except ServerException as error:  # the SDK raises another class for a refused upload
        if error.status_code != FORBIDDEN:
            raise
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        branch = repository.branch(f"actions-{stamp}").create(source_reference=main.id)
        _write_texts(branch, wanted)
        branch.commit(message="lakeloop: install actions", metadata=metadata)
        merged = branch.merge_into(main, message="lakeloop: install actions", metadata=metadata)
        branch.delete()
        return str(merged)
    return main.commit(message="lakeloop: install actions", metadata=metadata).get_commit().id


def _write_texts(branch: lakefs.Branch, texts: Mapping[str, str]) -> None:
    for path, text in texts.items():
        branch.object(path).upload(data=text, mode="w", content_type="application/x-yaml")


def _read_text(stored: lakefs.StoredObject) -> str | None:
    try:
        with stored.reader(mode="r") as handle:
            content = handle.read()
    except NotFoundException:
        return None
    return content if isinstance(content, str) else content.decode()


@dataclass(frozen=True)
class Published:
    """Outcome of one write-audit-publish ingest."""

    ingest_branch: str
    paths: list[str]
    rows: int
    metadata: dict[str, str]
    commit_id: str | None = None
    """The merge commit on the production branch; ``None`` when the merge was blocked."""
    rejection: str = ""
    """Why the pre-merge checks blocked it: lakeFS's message, then what each failed hook
    answered (the data checks' list of failed checks), read from the hook run's output."""

    @property
    def merged(self) -> bool:
        return self.commit_id is not None


@dataclass
class Progress:
    """Bytes staged so far across every file of an ingest; ``report`` gets the running total."""

    total: int
    report: Callable[[int], None] = field(default=lambda _: None)
    done: int = 0

    def advance(self, count: int) -> None:
        self.done += count
        self.report(self.done)


def publish(
    client: lakefs.Client,
    settings: Settings,
    tables: list[SourceTable],
    *,
    name: str,
    source: str,
    dataset_version: int,
    progress: Progress | None = None,
    metadata: Mapping[str, str] | None = None,
    description: str | None = None,
) -> Published:
    """Write-audit-publish: upload ``tables`` to a fresh ingest branch (with ``description``, the
    dataset description's YAML they were written under, beside them), commit them with their
    lineage (plus ``metadata``), and merge into the production branch. lakeFS runs the pre-merge
    data checks; when they fail the merge is refused, the production branch is untouched, and the
    ingest branch stays with the reason committed on it."""
    repository = lakefs.Repository(settings.lakefs.repository, client=client)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    name = batch_name(name)
    ingest = repository.branch(f"ingest-{name}-{stamp}").create(
        source_reference=settings.lakefs.branch
    )
    folder = PurePosixPath(settings.lakefs.data_prefix) / f"{stamp}-{name}"
    paths = []
    for table in tables:
        path = str(folder / table.name)
        _upload_file(ingest.object(path), table, progress)
        paths.append(path)
    if description is not None:
        # Each batch is judged by the description it was ingested with, also after it changed.
        ingest.object(str(folder / DESCRIPTION_FILE)).upload(
            data=description, mode="w", content_type="application/x-yaml"
        )
    metadata = lineage_metadata(tables, source=source, dataset_version=dataset_version) | dict(
        metadata or {}
    )
    rows = sum(table.rows for table in tables)
    ingest.commit(message=f"ingest {name}: {rows} rows", metadata=metadata)
    published = Published(ingest_branch=ingest.id, paths=paths, rows=rows, metadata=metadata)
    return _merge(client, repository, ingest, settings, published, message=f"publish {name}")


def _merge(
    client: lakefs.Client,
    repository: lakefs.Repository,
    branch: lakefs.Branch,
    settings: Settings,
    published: Published,
    *,
    message: str,
) -> Published:
    """Merge ``branch`` into the production branch; a refusal by the pre-merge checks is
    recorded on ``branch`` and returned as the rejection. :class:`HookConfigurationError` when
    lakeFS could not run the checks at all (the branch stays, unmerged, for a later merge)."""
    try:
        merge_commit = branch.merge_into(
            repository.branch(settings.lakefs.branch), message=message, metadata=published.metadata
        )
    except ServerException as error:
        text = str(error.body.get("message") or error)
        if error.status_code != HOOK_BLOCKED:
            if HOOK_ABORTED in text:
                raise _configuration_error(text, branch=branch.id) from error
            raise
        reason = rejection_reason(client, repository.id, text)
        _record_rejection(branch, reason)
        return replace(published, rejection=reason)
    return replace(published, commit_id=merge_commit)


def rejection_reason(client: lakefs.Client, repository: str, message: str) -> str:
    """Why pre-* hooks refused an operation, in the hooks' own words.

    lakeFS's 412 names the aborted action run and each failed hook's status code, never what the
    webhook answered (pkg/actions/webhook.go); the answer is in the hook run's output, stored by
    lakeFS under the run. Returns lakeFS's message on one line followed by each failed hook's
    answer, or the message alone when no answer can be read."""
    summary = " ".join(message.split())
    found = _RUN_ID.search(message)
    if found is None:
        return summary
    try:
        answers = [
            answer for answer in _failed_hook_answers(client, repository, found[1]) if answer
        ]
    except LakeFSException:
        return summary
    return f"{summary}: {'; '.join(answers)}" if answers else summary


def _failed_hook_answers(client: lakefs.Client, repository: str, run_id: str) -> Iterator[str]:
    actions = client.sdk_client.actions_api
    with api_exception_handler():
        # Read as JSON: lakeFS lists a hook after a failed one as "skipped", a status the SDK's
        # model (from lakeFS's own OpenAPI enum) refuses.
        listing = actions.list_run_hooks_with_http_info(
            repository, run_id, amount=1000, _preload_content=False
        )
        for hook in json.loads(listing.raw_data)["results"]:
            if hook["status"] == "failed":
                output = actions.get_run_hook_output(repository, run_id, hook["hook_run_id"])
                text = (
                    output if isinstance(output, str) else bytes(output).decode("utf-8", "replace")
                )
                yield webhook_answer(text)


def webhook_answer(output: str) -> str:
    """The response body a webhook hook got, from lakeFS's hook run output: after ``Response:``
    comes the HTTP response as Go's ``httputil.DumpResponse`` writes it (status line, headers,
    blank line, body), then, for a failed hook, ``Error: ...`` on its own. Empty when the hook
    got no response (a timeout, a refused connection)."""
    _, marker, response = output.rpartition("\nResponse:\n")
    if not marker:
        return ""
    _, blank, body = response.partition("\r\n\r\n")
    if not blank:
        return ""
    return _HOOK_ERROR.sub("", body).strip()


_HOOK_ERROR = re.compile(r"Error: [^\n]*\n?\Z")


def _configuration_error(message: str, *, branch: str) -> HookConfigurationError:
    missing = _MISSING_VARIABLE.search(message)
    cause = (
        f"the lakeFS server's environment lacks {missing[1]}, which an action file reads"
        if missing
        else "lakeFS could not load or configure the repository's actions"
    )
    return HookConfigurationError(
        f"lakeFS did not run the pre-merge data checks: {cause}. Nothing was judged or merged; "
        f"the data stays on branch {branch}. lakeFS said: {' '.join(message.split())}"
    )


def remove_tables(client: lakefs.Client, settings: Settings, paths: list[str]) -> Published:
    """Remove stored tables from the production branch the way data reaches it: a branch that
    deletes them, merged through the same pre-merge checks (which judge what the branch will
    hold), so the merge triggers training like any other. Raises :class:`ValueError` naming a
    path that is not a table on the production branch."""
    repository = lakefs.Repository(settings.lakefs.repository, client=client)
    main = repository.branch(settings.lakefs.branch)
    stored = stored_tables(main, prefix=settings.lakefs.data_prefix)
    unknown = [path for path in paths if path not in stored]
    if unknown:
        raise ValueError(
            f"not a table on {settings.lakefs.repository}/{settings.lakefs.branch}: "
            f"{', '.join(unknown)} (`lakeloop data log` and `data show` list what is there)"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    branch = repository.branch(f"remove-{stamp}").create(source_reference=settings.lakefs.branch)
    for path in paths:
        branch.object(path).delete()
    metadata = {"lakeloop.kind": "remove", "removed": ",".join(paths)}
    branch.commit(message=f"remove {', '.join(paths)}", metadata=metadata)
    published = Published(ingest_branch=branch.id, paths=paths, rows=0, metadata=metadata)
    return _merge(
        client, repository, branch, settings, published, message=f"remove {len(paths)} table(s)"
    )


def lineage_metadata(
    tables: list[SourceTable], *, source: str, dataset_version: int
) -> dict[str, str]:
    """Commit metadata that ties the data to where it came from (lakeFS metadata is str → str)."""
    metadata = {
        "source": source,
        "rows": str(sum(table.rows for table in tables)),
        "columns": ",".join(tables[0].columns),
        "files": ",".join(table.name for table in tables),
        "dataset_version": str(dataset_version),
    }
    if len(tables) == 1:
        metadata["sha256"] = tables[0].sha256
    else:
        metadata.update({f"sha256:{table.name}": table.sha256 for table in tables})
    return metadata


def _upload_file(target: WriteableObject, table: SourceTable, progress: Progress | None) -> None:
    """Stream a local file into lakeFS (the SDK spools it to disk, not to memory)."""
    content_type = (
        "application/vnd.apache.parquet" if table.name.endswith(".parquet") else "text/csv"
    )
    with (
        table.path.open("rb") as source,
        target.writer(mode="wb", content_type=content_type) as sink,
    ):
        while chunk := source.read(_CHUNK):
            sink.write(chunk)
            if progress is not None:
                progress.advance(len(chunk))


def _record_rejection(branch: lakefs.Branch, reason: str) -> None:
    """Leave the reason on the rejected branch, as a file and in the commit metadata."""
    record = {"rejected_at": datetime.now(UTC).isoformat(), "reason": reason}
    branch.object(REJECTION_PATH).upload(data=json.dumps(record, indent=2), mode="w")
    branch.commit(
        message="lakeloop: rejected by the pre-merge checks",
        metadata={
            "lakeloop.rejected": "true",
            "lakeloop.reason": reason[:2000],
            SKIP_TRAINING_KEY: "true",
        },
    )


class UnreadableTableError(ValueError):
    """A stored table cannot be parsed; the message names its path and ref."""


@dataclass(frozen=True)
class StoredTable:
    """One table read from lakeFS: its checksum and its frame, or why it could not be parsed."""

    checksum: str
    frame: pd.DataFrame | None
    error: str = ""

    def load(self) -> pd.DataFrame:
        """The frame; :class:`UnreadableTableError` when it could not be parsed."""
        if self.frame is None:
            raise UnreadableTableError(self.error)
        return self.frame


def read_tables(
    client: lakefs.Client, settings: Settings, *, repository: str, ref: str
) -> dict[str, StoredTable]:
    """Every table under the data prefix at ``ref`` (a commit id for reproducibility), by path in
    ingest order; a table that cannot be parsed is kept with the reason, for the data gate to
    name."""
    reference = lakefs.Repository(repository, client=client).ref(ref)
    tables = {}
    for path, checksum in stored_tables(reference, prefix=settings.lakefs.data_prefix).items():
        try:
            tables[path] = StoredTable(checksum, read_object_table(reference, path))
        except UnreadableTableError as error:
            tables[path] = StoredTable(checksum, None, str(error))
    return tables


def read_table(
    client: lakefs.Client, settings: Settings, *, repository: str, ref: str
) -> pd.DataFrame:
    """Every table under the data prefix at ``ref`` (a commit id for reproducibility), in path
    order. Returns an empty frame when there is none."""
    reference = lakefs.Repository(repository, client=client).ref(ref)
    paths = table_paths(reference, settings)
    return _concat(read_object_table(reference, path) for path in paths)


def table_paths(reference: lakefs.Reference, settings: Settings) -> list[str]:
    """Paths of the tables under the data prefix at ``reference``, sorted."""
    return list(stored_tables(reference, prefix=settings.lakefs.data_prefix))


def stored_tables(reference: lakefs.Reference, *, prefix: str) -> dict[str, str]:
    """The tables under ``prefix`` at ``reference``: path → lakeFS checksum (the stored object's
    content identity), in path order, which is the order batches were ingested in."""
    return stored_data(reference, prefix=prefix, beside="")[0]


def stored_data(
    reference: lakefs.Reference, *, prefix: str, beside: str
) -> tuple[dict[str, str], dict[str, str]]:
    """One listing under ``prefix`` at ``reference``: the tables (path → checksum, in path order)
    and the folders holding a file named ``beside`` (folder → that file's checksum)."""
    tables, found = {}, {}
    for info in reference.objects(prefix=prefix):
        if not isinstance(info, ObjectInfo):
            continue
        folder, _, name = info.path.rpartition("/")
        if info.path.endswith(TABLE_SUFFIXES):
            tables[info.path] = info.checksum
        elif beside and name == beside:
            found[folder] = info.checksum
    return dict(sorted(tables.items())), found


def table_changes(
    repository: lakefs.Repository, *, base: str, head: str, prefix: str
) -> dict[str, str]:
    """Tables under ``prefix`` that merging ``head`` into ``base`` would add, change or remove
    (lakeFS's three-dot diff): path → ``added``, ``changed`` or ``removed``."""
    return {
        change.path: change.type
        for change in repository.ref(base).diff(head, prefix=prefix)
        if change.path.endswith(TABLE_SUFFIXES)
    }


def main_reference(client: lakefs.Client, settings: Settings) -> lakefs.Branch:
    """The production branch of the configured repository."""
    return lakefs.Repository(settings.lakefs.repository, client=client).branch(
        settings.lakefs.branch
    )


def head_commit(client: lakefs.Client, settings: Settings) -> str:
    """Id of the newest commit on the production branch."""
    return str(main_reference(client, settings).get_commit().id)


def read_object_table(reference: lakefs.Reference, path: str) -> pd.DataFrame:
    """One stored table at ``reference``; :class:`UnreadableTableError` when it cannot be parsed."""
    return parse_table(read_bytes(reference, path), path=path, ref=reference.id)


def read_bytes(reference: lakefs.Reference, path: str) -> bytes:
    """The stored bytes of one object at ``reference``."""
    with reference.object(path).reader(mode="rb") as handle:
        content = handle.read()
    return content if isinstance(content, bytes) else content.encode()


def parse_table(content: bytes, *, path: str, ref: str) -> pd.DataFrame:
    """A stored table's bytes as a frame (Parquet or CSV by its suffix), parsed as ingest does."""
    try:
        if path.endswith(".parquet"):
            return pd.read_parquet(io.BytesIO(content))
        return read_csv(content)
    except Exception as error:  # pandas and pyarrow raise many types for a bad file
        raise UnreadableTableError(f"cannot read {path} at {ref:.12}: {error}") from error


def _concat(frames: Iterator[pd.DataFrame]) -> pd.DataFrame:
    collected = list(frames)
    return pd.concat(collected, ignore_index=True) if collected else pd.DataFrame()


def commit_log(client: lakefs.Client, settings: Settings, *, ref: str, limit: int) -> list[Any]:
    """The newest ``limit`` commits reachable from ``ref``."""
    repository = lakefs.Repository(settings.lakefs.repository, client=client)
    return list(repository.ref(ref).log(max_amount=limit))


def commit_adding(reference: lakefs.Reference, path: str) -> str | None:
    """The newest commit reachable from ``reference`` that wrote ``path``."""
    for commit in reference.log(max_amount=1, objects=[path]):
        return str(commit.id)
    return None


def commits_since(
    client: lakefs.Client, *, repository: str, ref: str, ancestor: str, limit: int = 1000
) -> int | None:
    """How many commits on ``ref``'s first-parent line (the production branch's own history:
    merges and direct commits, not the ingest branches' commits) come after ``ancestor``; None
    when ``ancestor`` is not among the newest ``limit``."""
    log = (
        lakefs.Repository(repository, client=client)
        .ref(ref)
        .log(max_amount=limit, first_parent=True)
    )
    for count, commit in enumerate(log):
        if commit.id == ancestor:
            return count
    return None


def diff_refs(client: lakefs.Client, settings: Settings, *, left: str, right: str) -> list[Any]:
    """What ``right`` adds, changes or removes relative to ``left`` (lakeFS three-dot diff)."""
    repository = lakefs.Repository(settings.lakefs.repository, client=client)
    return list(repository.ref(left).diff(right))


def read_object(client: lakefs.Client, settings: Settings, *, ref: str, path: str) -> pd.DataFrame:
    """One stored table at ``ref``."""
    reference = lakefs.Repository(settings.lakefs.repository, client=client).ref(ref)
    return read_object_table(reference, path)
