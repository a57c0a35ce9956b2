"""The ``lakefs_target`` fixture: the local server always, a real lakeFS when configured.

Real lakeFS: set ``LAKEFS_ENDPOINT`` (e.g. ``http://127.0.0.1:8000``), ``LAKEFS_ACCESS_KEY_ID``
and ``LAKEFS_SECRET_ACCESS_KEY``; optionally ``LAKEFS_STORAGE_NAMESPACE`` (default
``local://lakeloop-conformance/``) and, for the webhook tests, ``LAKEFS_WEBHOOK_HOST``: an address
of this machine that the lakeFS server can reach. Each test creates its own repository there and
deletes it afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import lakefs
import pytest

from lakefs_local.testing import LocalServerThread, WebhookReceiver

REAL_SKIP = (
    "set LAKEFS_ENDPOINT, LAKEFS_ACCESS_KEY_ID and LAKEFS_SECRET_ACCESS_KEY "
    "to run against a real lakeFS"
)
WEBHOOK_SKIP = (
    "set LAKEFS_WEBHOOK_HOST to an address of this machine that the real lakeFS can reach "
    "to run webhook tests against it"
)
DEFAULT_NAMESPACE = "local://lakeloop-conformance/"


@dataclass(frozen=True)
class LakeFSTarget:
    """One lakeFS to test: how to reach it and what differs between local and real."""

    kind: str  # "local" or "real"
    endpoint: str
    key_id: str
    secret: str
    storage_namespace: str
    webhook_host: str | None  # None: webhook tests cannot run against this target

    def client(self, *, secret: str | None = None) -> lakefs.Client:
        """An SDK client; pass ``secret`` to try other credentials."""
        return lakefs.Client(
            host=self.endpoint, username=self.key_id, password=secret or self.secret
        )

    @property
    def is_local(self) -> bool:
        """True for the lakeloop local server."""
        return self.kind == "local"


@pytest.fixture(scope="session")
def _local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServerThread]:
    server = LocalServerThread(tmp_path_factory.mktemp("lakefs-conformance")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["local", "real"])
def lakefs_target(request: pytest.FixtureRequest) -> LakeFSTarget:
    """The lakeFS under test (parametrised: local always, real when configured)."""
    if request.param == "local":
        server: LocalServerThread = request.getfixturevalue("_local_server")
        return LakeFSTarget(
            "local", server.url, server.key_id, server.secret, "local://conformance/", "127.0.0.1"
        )
    endpoint = os.environ.get("LAKEFS_ENDPOINT", "")
    key_id = os.environ.get("LAKEFS_ACCESS_KEY_ID", "")
    secret = os.environ.get("LAKEFS_SECRET_ACCESS_KEY", "")
    if not (endpoint and key_id and secret):
        pytest.skip(REAL_SKIP)
    return LakeFSTarget(
        "real",
        endpoint.rstrip("/").removesuffix("/api/v1"),
        key_id,
        secret,
        os.environ.get("LAKEFS_STORAGE_NAMESPACE", DEFAULT_NAMESPACE),
        os.environ.get("LAKEFS_WEBHOOK_HOST"),
    )


@pytest.fixture
def repo(lakefs_target: LakeFSTarget) -> Iterator[lakefs.Repository]:
    """A fresh, uniquely named repository on the target, deleted after the test."""
    name = f"conf-{uuid.uuid4().hex[:12]}"
    namespace = f"{lakefs_target.storage_namespace.rstrip('/')}/{name}"
    repository = lakefs.Repository(name, client=lakefs_target.client()).create(
        storage_namespace=namespace, default_branch="main"
    )
    yield repository
    repository.delete()


@pytest.fixture
def receiver(lakefs_target: LakeFSTarget) -> Iterator[WebhookReceiver]:
    """A webhook endpoint the target can reach."""
    if lakefs_target.webhook_host is None:
        pytest.skip(WEBHOOK_SKIP)
    hook_receiver = WebhookReceiver(lakefs_target.webhook_host)
    yield hook_receiver
    hook_receiver.close()
