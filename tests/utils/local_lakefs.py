"""A repository on the lakeFS-compatible server, served over HTTP in a thread, for tests that drive
the data gate without the rest of the stack (no action files installed: nothing fires on commit)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lakefs

from lakefs_local import create_app as create_lakefs
from lakeloop import events, lakefs_client
from lakeloop.settings import Settings, load_settings
from tests.utils.net import free_port, serve_in_thread


@contextmanager
def local_repository(root: Path, *, secret: str) -> Iterator[tuple[Settings, lakefs.Client]]:
    """Settings on ``root`` and a client of a fresh lakeFS-compatible server with the configured
    repository created."""
    port = free_port()
    settings = load_settings(
        state_dir=root / "state", lakefs={"port": port, "secret_access_key": secret}
    )
    app = create_lakefs(
        data_dir=root / "lakefs",
        access_key_id=settings.lakefs.access_key_id,
        secret_access_key=secret,
    )
    with serve_in_thread(app, port=port):
        client = lakefs_client.connect(settings)
        lakefs_client.ensure_repository(client, settings)
        yield settings, client


def pre_merge_hook(settings: Settings, *, target: str, source: str) -> events.LakeFSWebhook:
    """The pre-merge webhook lakeFS sends when ``source`` is merged into ``target``."""
    return events.LakeFSWebhook(
        event_type="pre-merge",
        event_time="2026-11-29T00:00:00Z",
        action_name="lakeloop",
        hook_id="lakeloop_validate",
        repository_id=settings.lakefs.repository,
        branch_id=target,
        source_ref=source,
    )
