"""Every read and write of versioned data, through the official lakeFS SDK.

The same functions work against a real lakeFS and the built-in local server, because both speak
the lakeFS REST API.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import PurePosixPath

import lakefs
import pandas as pd
from lakefs.exceptions import LakeFSException, NotFoundException

from lakeloop.events import SKIP_TRAINING_KEY
from lakeloop.settings import Settings

ACTION_PATH = "_lakefs_actions/lakeloop.yaml"
TABLE_SUFFIXES = (".parquet", ".csv")

# What callers catch: every error the lakeFS SDK raises.
LakeFSError = LakeFSException


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
        storage_namespace=f"local://{settings.lakefs.repository}",
        default_branch=settings.lakefs.branch,
        exist_ok=True,
    )


def render_action(settings: Settings) -> str:
    """The lakeFS action file that sends commits and merges on the production branch to the
    gateway. The shared secret is a lakeFS env reference, never a value in the repository."""
    template = resources.files("deployments.lakefs_actions").joinpath("lakeloop.yaml").read_text()
    return template.replace("${GATEWAY_URL}", settings.gateway.url).replace(
        "${BRANCH}", settings.lakefs.branch
    )


def install_actions(client: lakefs.Client, settings: Settings) -> str | None:
    """Commit the action file to the production branch if it differs; returns the commit id or
    ``None`` when it was already in place."""
    branch = lakefs.Repository(settings.lakefs.repository, client=client).branch(
        settings.lakefs.branch
    )
    wanted = render_action(settings)
    action = branch.object(ACTION_PATH)
    try:
        with action.reader(mode="r") as current:
            if current.read() == wanted:
                return None
    except NotFoundException:
        pass
    action.upload(data=wanted, mode="w", content_type="application/x-yaml")
    reference = branch.commit(
        message="lakeloop: install actions",
        metadata={"lakeloop.kind": "actions", SKIP_TRAINING_KEY: "true"},
    )
    return reference.get_commit().id


@dataclass(frozen=True)
class PublishedBatch:
    """A batch that reached the production branch."""

    path: str
    ingest_branch: str
    commit_id: str
    """The merge commit on the production branch."""
    rows: int
    sha256: str


def publish_batch(
    client: lakefs.Client,
    settings: Settings,
    frame: pd.DataFrame,
    *,
    name: str,
    source: str,
    dataset_version: int,
) -> PublishedBatch:
    """Write ``frame`` as Parquet on a fresh ingest branch, commit it with its lineage metadata and
    merge it into the production branch (the merge is what triggers training)."""
    repository = lakefs.Repository(settings.lakefs.repository, client=client)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    ingest = repository.branch(f"ingest-{name}-{stamp}").create(
        source_reference=settings.lakefs.branch
    )
    payload = frame_to_parquet(frame)
    digest = hashlib.sha256(payload).hexdigest()
    path = str(PurePosixPath(settings.lakefs.data_prefix) / f"{name}.parquet")
    ingest.object(path).upload(
        data=payload, mode="wb", content_type="application/vnd.apache.parquet"
    )
    metadata = {
        "source": source,
        "rows": str(len(frame)),
        "columns": ",".join(map(str, frame.columns)),
        "sha256": digest,
        "dataset_version": str(dataset_version),
    }
    ingest.commit(message=f"ingest {name}: {len(frame)} rows", metadata=metadata)
    merge_commit = ingest.merge_into(
        repository.branch(settings.lakefs.branch),
        message=f"publish {name}",
        metadata=metadata,
    )
    return PublishedBatch(
        path=path, ingest_branch=ingest.id, commit_id=merge_commit, rows=len(frame), sha256=digest
    )


def frame_to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def read_table(
    client: lakefs.Client, settings: Settings, *, repository: str, ref: str
) -> pd.DataFrame:
    """Every table under the data prefix at ``ref`` (a commit id for reproducibility), in path
    order. Returns an empty frame when there is none."""
    reference = lakefs.Repository(repository, client=client).ref(ref)
    paths = sorted(
        info.path
        for info in reference.objects(prefix=settings.lakefs.data_prefix)
        if info.path.endswith(TABLE_SUFFIXES)
    )
    frames = []
    for path in paths:
        with reference.object(path).reader(mode="rb") as handle:
            content = handle.read()
        raw = io.BytesIO(content if isinstance(content, bytes) else content.encode())
        frames.append(pd.read_parquet(raw) if path.endswith(".parquet") else pd.read_csv(raw))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
