"""The lakeFS-compatible server, served over HTTP in a thread: a bare repository for tests that
drive the data gate without the rest of the stack (no action files installed: nothing fires on
commit), or a repository with lakeloop's action files and the gateway behind them, relaying to a
stand-in of Prefect's events endpoint (write-audit-publish without the rest of the loop)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lakefs
import pytest
from litestar import Litestar

from gateway.app import create_gateway
from lakefs_local import create_app as create_lakefs
from lakefs_local.blockstore import S3Settings
from lakeloop import events, lakefs_client
from lakeloop.settings import Settings, load_settings
from tests.utils.fake_prefect import FakePrefectEvents
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


@dataclass(frozen=True)
class GatedLake:
    settings: Settings
    client: lakefs.Client
    prefect: FakePrefectEvents
    """What the gateway relayed to Prefect."""
    lakefs_app: Litestar
    """The lakeFS-compatible server, to see when its post-hooks ended."""


@contextmanager
def gated_repository(
    root: Path,
    *,
    webhook_secret: str,
    lakefs_secret: str,
    storage_namespace: str | None = None,
    blockstore_s3: S3Settings | None = None,
    install_actions: bool = True,
) -> Iterator[GatedLake]:
    """Settings on ``root``, a lakeFS-compatible server with the configured repository and
    lakeloop's action files installed, and the gateway its hooks call (the pre-merge data checks,
    the post-merge relay to a stand-in of Prefect's events endpoint). ``storage_namespace`` and
    ``blockstore_s3`` keep the data in S3 instead of the server's folder; without
    ``install_actions`` the caller installs the action files (to watch how)."""
    lakefs_port, gateway_port = free_port(), free_port()
    lakefs_settings: dict[str, Any] = {"port": lakefs_port, "secret_access_key": lakefs_secret}
    if storage_namespace is not None:
        lakefs_settings["storage_namespace"] = storage_namespace
    prefect = FakePrefectEvents()
    with pytest.MonkeyPatch.context() as patch, serve_in_thread(prefect.app()) as prefect_url:
        # What the lakeFS server's environment must carry for the action's {{ ENV.… }} header.
        patch.setenv("LAKEFSACTION_LAKELOOP_WEBHOOK_SECRET", webhook_secret)
        settings = load_settings(
            state_dir=root / "state",
            lakefs=lakefs_settings,
            gateway={"port": gateway_port, "webhook_secret": webhook_secret},
            prefect={"api_url": f"{prefect_url}/api"},
        )
        lakefs_app = create_lakefs(
            data_dir=root / "lakefs",
            access_key_id=settings.lakefs.access_key_id,
            secret_access_key=lakefs_secret,
            blockstore_s3=blockstore_s3,
        )
        with (
            serve_in_thread(lakefs_app, port=lakefs_port),
            serve_in_thread(create_gateway(settings), port=gateway_port),
        ):
            client = lakefs_client.connect(settings)
            lakefs_client.ensure_repository(client, settings)
            if install_actions:
                lakefs_client.install_actions(client, settings)
            yield GatedLake(settings, client, prefect, lakefs_app)


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
