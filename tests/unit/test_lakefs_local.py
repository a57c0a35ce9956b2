"""The lakeFS-compatible local server, driven over HTTP by the real ``lakefs`` SDK."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lakefs
import pytest
import uvicorn
from lakefs.exceptions import (
    ConflictException,
    NotAuthorizedException,
    NotFoundException,
    ServerException,
)

from lakeloop.lakefs_local import create_app
from lakeloop.lakefs_local.actions import parse_duration

KEY_ID = "AKIALAKELOOPTEST"
SECRET = "unit-test-secret-0123456789"
HEADER_SECRET = "hook-shared-secret-42"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A local server on a loopback port, in a background thread."""

    data_dir: Path
    port: int = field(default_factory=_free_port)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RunningServer:
        app = create_app(data_dir=self.data_dir, access_key_id=KEY_ID, secret_access_key=SECRET)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop the server; a second call does nothing."""
        if self.server is None or self.thread is None:
            return
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.server = self.thread = None

    def client(self, password: str = SECRET) -> lakefs.Client:
        return lakefs.Client(host=self.url, username=KEY_ID, password=password)


class Receiver:
    """A tiny webhook receiver: records each POST, answers with a configurable status."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.status = 200
        self.reply = b"ok"
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.calls.append(
                    {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
                )
                self.send_response(receiver.status)
                self.send_header("content-length", str(len(receiver.reply)))
                self.end_headers()
                self.wfile.write(receiver.reply)

            def log_message(self, *args: object) -> None:
                """Keep test output quiet."""

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.calls


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = RunningServer(tmp_path / "lakefs").start()
    yield running
    running.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook_receiver = Receiver()
    yield hook_receiver
    hook_receiver.httpd.shutdown()


def _repo(server: RunningServer) -> lakefs.Repository:
    return lakefs.Repository("housing", client=server.client()).create(
        storage_namespace="local://housing", default_branch="main", exist_ok=True
    )


def _read(repo: lakefs.Repository, ref: str, path: str) -> bytes:
    return repo.ref(ref).object(path).reader(mode="rb").read()  # type: ignore[return-value]


def test_repository_create_is_idempotent_and_listed(server: RunningServer) -> None:
    repo = _repo(server)
    again = _repo(server)
    assert again.properties.default_branch == "main"
    assert repo.properties.storage_namespace == "local://housing"
    assert [r.id for r in lakefs.repositories(client=server.client())] == ["housing"]
    assert repo.branch("main").head.id == repo.branch("main").get_commit().id


def test_upload_commit_metadata_and_time_travel(server: RunningServer) -> None:
    repo = _repo(server)
    branch = repo.branch("ingest-1").create(source_reference="main", exist_ok=True)
    branch.object("data/a.parquet").upload(data=b"first", mode="wb")
    branch.object("data/b.parquet").upload(data=b"second", mode="wb")
    commit_ref = branch.commit(message="batch 1", metadata={"source": "unit"})

    assert len(commit_ref.id) == 64
    commit = repo.ref(commit_ref.id).get_commit()
    assert commit.metadata == {"source": "unit"}
    assert commit.message == "batch 1"
    assert [c.message for c in branch.log()] == ["batch 1", "Repository created"]

    branch.object("data/a.parquet").upload(data=b"rewritten", mode="wb")
    branch.commit(message="batch 2")
    assert _read(repo, commit_ref.id, "data/a.parquet") == b"first"
    assert _read(repo, "ingest-1", "data/a.parquet") == b"rewritten"
    stat = repo.ref(commit_ref.id).object("data/b.parquet").stat()
    assert stat.size_bytes == len(b"second")


def test_listing_prefix_and_pagination(server: RunningServer) -> None:
    repo = _repo(server)
    main = repo.branch("main")
    for index in range(5):
        main.object(f"data/part-{index}.parquet").upload(data=bytes([index]), mode="wb")
    main.object("other/readme.txt").upload(data=b"x", mode="wb")

    paths = [o.path for o in main.objects(prefix="data/", amount=2)]  # 3 pages of 2
    assert paths == [f"data/part-{i}.parquet" for i in range(5)]
    sdk = server.client().sdk_client.objects_api
    page = sdk.list_objects("housing", "main", prefix="data/", amount=2)
    assert page.pagination.has_more
    assert page.pagination.next_offset == "data/part-1.parquet"
    assert [o.path for o in main.objects(delimiter="/")] == ["data/", "other/"]


def test_merge_applies_source_changes(server: RunningServer) -> None:
    repo = _repo(server)
    main = repo.branch("main")
    main.object("data/base.parquet").upload(data=b"base", mode="wb")
    main.commit(message="base")
    ingest = repo.branch("ingest-2").create(source_reference="main")
    ingest.object("data/new.parquet").upload(data=b"new rows", mode="wb")
    ingest.commit(message="new batch")
    main.object("docs/readme.md").upload(data=b"main-only", mode="wb")
    main.commit(message="docs")

    merge_id = ingest.merge_into(main, message="merge ingest-2", metadata={"by": "test"})

    merged = repo.ref(merge_id).get_commit()
    assert len(merged.parents) == 2
    assert merged.metadata == {"by": "test"}
    assert main.get_commit().id == merge_id
    assert _read(repo, "main", "data/new.parquet") == b"new rows"
    assert _read(repo, "main", "docs/readme.md") == b"main-only"
    assert _read(repo, "main", "data/base.parquet") == b"base"


def test_merge_conflict_is_409(server: RunningServer) -> None:
    repo = _repo(server)
    main = repo.branch("main")
    main.object("data/x.parquet").upload(data=b"v0", mode="wb")
    main.commit(message="v0")
    side = repo.branch("side").create(source_reference="main")
    side.object("data/x.parquet").upload(data=b"side", mode="wb")
    side.commit(message="side edit")
    main.object("data/x.parquet").upload(data=b"main", mode="wb")
    head = main.commit(message="main edit").id

    with pytest.raises(ConflictException) as caught:
        side.merge_into(main)
    assert "data/x.parquet" in caught.value.body["message"]
    assert main.get_commit().id == head


def test_errors_map_to_sdk_exceptions(server: RunningServer) -> None:
    repo = _repo(server)
    with pytest.raises(NotFoundException):
        repo.branch("main").object("missing.parquet").stat()
    with pytest.raises(NotFoundException):
        repo.branch("main").object("missing.parquet").reader().read()
    assert not repo.branch("main").object("missing.parquet").exists()
    with pytest.raises(NotFoundException) as caught:
        lakefs.Repository("nowhere", client=server.client()).branch("main").get_commit()
    assert "nowhere" in caught.value.body["message"]
    with pytest.raises(ConflictException):
        repo.branch("main").create(source_reference="main")
    bad = lakefs.Repository("housing", client=server.client(password="wrong-password"))
    with pytest.raises(NotAuthorizedException):
        bad.branch("main").get_commit()


def test_data_survives_restart(server: RunningServer) -> None:
    repo = _repo(server)
    main = repo.branch("main")
    main.object("data/keep.parquet").upload(data=b"durable", mode="wb")
    commit_id = main.commit(message="keep", metadata={"n": "1"}).id
    server.stop()

    restarted = RunningServer(server.data_dir).start()
    try:
        repo2 = lakefs.Repository("housing", client=restarted.client())
        assert _read(repo2, commit_id, "data/keep.parquet") == b"durable"
        assert repo2.ref(commit_id).get_commit().metadata == {"n": "1"}
        assert repo2.branch("main").get_commit().id == commit_id
    finally:
        restarted.stop()


def _install_action(repo: lakefs.Repository, name: str, body: str) -> None:
    main = repo.branch("main")
    main.object(f"_lakefs_actions/{name}.yaml").upload(data=body, mode="w")
    main.commit(message=f"install {name}")


def test_post_merge_webhook_payload(
    server: RunningServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKEFSACTION_HOOK_SECRET", HEADER_SECRET)
    repo = _repo(server)
    _install_action(
        repo,
        "notify",
        f"""
name: notify on merge
on:
  post-merge:
    branches: [main]
hooks:
  - id: notify_gateway
    type: webhook
    properties:
      url: {receiver.url}/lakefs
      timeout: 5s
      query_params:
        source: lakefs
      headers:
        X-Lakeloop-Secret: "{{{{ ENV.LAKEFSACTION_HOOK_SECRET }}}}"
        X-Unprefixed: "{{{{ ENV.HOME }}}}"
""",
    )
    ingest = repo.branch("ingest-3").create(source_reference="main")
    ingest.object("data/new.parquet").upload(data=b"rows", mode="wb")
    ingest.commit(message="batch")
    merge_id = ingest.merge_into(repo.branch("main"), message="publish", metadata={"k": "v"})

    call = receiver.wait_for(1)[0]
    payload = call["json"]
    assert payload["event_type"] == "post-merge"
    assert payload["action_name"] == "notify on merge"
    assert payload["hook_id"] == "notify_gateway"
    assert payload["repository_id"] == "housing"
    assert payload["branch_id"] == "main"
    assert payload["commit_id"] == merge_id
    assert payload["source_ref"] == merge_id
    assert payload["commit_message"] == "publish"
    assert payload["committer"] == "admin"
    assert payload["commit_metadata"] == {"k": "v"}
    assert payload["event_time"].endswith("Z")
    assert call["headers"]["X-Lakeloop-Secret"] == HEADER_SECRET
    assert call["headers"]["X-Unprefixed"] == ""  # outside LAKEFSACTION_: rendered empty
    assert call["path"] == "/lakefs?source=lakefs"

    runs = server.client().sdk_client.actions_api.list_repository_runs("housing")
    assert [(r.event_type, r.status, r.commit_id) for r in runs.results] == [
        ("post-merge", "completed", merge_id)
    ]


def test_failing_pre_merge_hook_blocks_merge(server: RunningServer, receiver: Receiver) -> None:
    receiver.status, receiver.reply = 400, b"expectation failed: price_range"
    repo = _repo(server)
    _install_action(
        repo,
        "validate",
        f"""
name: validate batch
on:
  pre-merge:
    branches: ["ma*"]
hooks:
  - id: great_expectations
    type: webhook
    properties:
      url: {receiver.url}/validate
""",
    )
    main_head = repo.branch("main").get_commit().id
    ingest = repo.branch("ingest-4").create(source_reference="main")
    ingest.object("data/bad.parquet").upload(data=b"bad rows", mode="wb")
    source_commit = ingest.commit(message="bad batch").id

    with pytest.raises(ServerException) as caught:
        ingest.merge_into(repo.branch("main"))
    assert caught.value.status_code == 412
    message = caught.value.body["message"]
    assert "validate batch" in message
    assert "great_expectations" in message
    assert "price_range" in message
    assert repo.branch("main").get_commit().id == main_head
    payload = receiver.calls[0]["json"]
    assert payload["event_type"] == "pre-merge"
    assert payload["source_ref"] == source_commit
    assert "commit_id" not in payload


def test_branch_filter_that_does_not_match_fires_nothing(
    server: RunningServer, receiver: Receiver
) -> None:
    repo = _repo(server)
    _install_action(
        repo,
        "prod-only",
        f"""
name: production only
on:
  post-commit:
    branches: [production]
  post-merge:
    branches: [production]
hooks:
  - id: never
    type: webhook
    properties:
      url: {receiver.url}/never
""",
    )
    ingest = repo.branch("ingest-5").create(source_reference="main")
    ingest.object("data/x.parquet").upload(data=b"x", mode="wb")
    ingest.commit(message="x")
    ingest.merge_into(repo.branch("main"))
    time.sleep(0.3)
    assert receiver.calls == []
    assert server.client().sdk_client.actions_api.list_repository_runs("housing").results == []


def test_go_durations() -> None:
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration(None) == 60
