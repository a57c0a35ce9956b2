"""The local lakeFS server's own guarantees: durability, concurrency, hooks, store internals.

What any lakeFS must do is in ``tests/conformance``; this file checks what only the local
server can be asked (SIGKILL it, race it, look inside its store) and its hook plumbing.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lakefs
import pytest
from lakefs.exceptions import BadRequestException, ServerException

from lakefs_local.actions import ActionError, parse_action, parse_duration
from lakefs_local.store import BadRequestError, ObjectEntry, Store, validate_path
from lakefs_local.testing import (
    LocalServerProcess,
    LocalServerThread,
    WebhookReceiver,
    free_port,
)
from tests.utils.durability import DurabilityCalls

HEADER_SECRET = "hook-shared-secret-42"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServerThread]:
    running = LocalServerThread(tmp_path / "lakefs").start()
    yield running
    running.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook_receiver = WebhookReceiver()
    yield hook_receiver
    hook_receiver.close()


def _client(server: LocalServerThread | LocalServerProcess) -> lakefs.Client:
    return lakefs.Client(host=server.url, username=server.key_id, password=server.secret)


def _repo(server: LocalServerThread | LocalServerProcess) -> lakefs.Repository:
    return lakefs.Repository("housing", client=_client(server)).create(
        storage_namespace="local://housing", default_branch="main", exist_ok=True
    )


def _read(repo: lakefs.Repository, ref: str, path: str) -> bytes:
    return repo.ref(ref).object(path).reader(mode="rb").read()  # type: ignore[return-value]


def _install_action(repo: lakefs.Repository, name: str, body: str) -> None:
    main = repo.branch("main")
    main.object(f"_lakefs_actions/{name}.yaml").upload(data=body, mode="w")
    main.commit(message=f"install {name}")


def _webhook_action(
    name: str, events: list[str], url: str, *, timeout: str = "5s", branches: str = ""
) -> str:
    """An action file; ``branches`` (a YAML list) keeps its own install commit from firing it."""
    spec = f" {{branches: {branches}}}" if branches else ""
    on = "".join(f"  {event}:{spec}\n" for event in events)
    return f"""
name: {name}
on:
{on}hooks:
  - id: hook_{name.replace(" ", "_")}
    type: webhook
    properties:
      url: {url}
      timeout: {timeout}
"""


def _runs(server: LocalServerThread, repo: str = "housing") -> list[tuple[str, str]]:
    results = _client(server).sdk_client.actions_api.list_repository_runs(repo).results
    return [(r.event_type, r.status) for r in results]


# -- durability --------------------------------------------------------------------------------


def test_sigkill_after_commit_loses_nothing(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: more than one write chunk
    process = LocalServerProcess(tmp_path / "lakefs").start()
    try:
        main = _repo(process).branch("main")
        main.object("data/batch.parquet").upload(data=payload, mode="wb")
        commit_id = main.commit(message="batch", metadata={"rows": "1"}).id
        repo_tag = _repo(process).tag("v1").create(commit_id)
        assert repo_tag.id == "v1"
    finally:
        process.kill()  # SIGKILL straight after the 201: no shutdown, no checkpoint

    restarted = LocalServerProcess(process.data_dir, port=free_port()).start()
    try:
        repo = lakefs.Repository("housing", client=_client(restarted))
        assert _read(repo, commit_id, "data/batch.parquet") == payload
        assert _read(repo, "v1", "data/batch.parquet") == payload
        assert repo.ref(commit_id).get_commit().metadata == {"rows": "1"}
        assert repo.branch("main").get_commit().id == commit_id
    finally:
        restarted.stop()


@pytest.mark.parametrize(
    "payload",
    [b"median_income,median_house_value\n8.3,452600\n", bytes(range(256)) * 4096 + b"tail"],
    ids=["small", "over-a-mebibyte"],  # within one file buffer; more than one write chunk
)
def test_an_upload_is_fsynced_and_in_place_before_the_row_that_names_it(
    server: LocalServerThread, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order is the promise: the blob's bytes are fsync'd before the rename that gives them
    their content address, the rename is made durable (its folder, and the folder above when
    the shard folder is new, fsync'd) before the staging row that names the blob is written, and
    that row is written on a connection with ``synchronous=FULL``. Otherwise a power cut after
    the upload answered can leave a row naming an empty, half or missing blob."""
    checksum = hashlib.sha256(payload).hexdigest()
    main = _repo(server).branch("main")
    objects = server.data_dir / "objects"
    assert not (objects / checksum[:2]).exists()  # a new shard folder: its parent is fsync'd too
    calls = DurabilityCalls().install(monkeypatch).install_sqlite(monkeypatch)
    main.object("data/batch.parquet").upload(data=payload, mode="wb")
    monkeypatch.undo()

    blob = objects / checksum[:2] / checksum[2:]
    names = {
        blob.stat().st_ino: "blob",
        blob.parent.stat().st_ino: "objects/<shard>/",
        objects.stat().st_ino: "objects/",
    }
    assert calls.steps(names) == [
        ("fsync", "blob", len(payload)),  # every byte in the file when it is synced
        ("replace", "blob", blob),
        ("fsync", "objects/<shard>/", None),
        ("fsync", "objects/", None),
    ]
    last_file_step = max(i for i, call in enumerate(calls.calls) if call.inode in names)
    [row] = [
        (i, call)
        for i, call in enumerate(calls.calls)
        if call.name == "sql" and checksum in (call.statement or "")
    ]
    position, insert = row
    assert (insert.statement or "").startswith("INSERT OR REPLACE INTO staging")
    assert position > last_file_step
    same_connection = [
        (i, call.statement)
        for i, call in enumerate(calls.calls)
        if call.name == "sql" and call.connection == insert.connection
    ]
    assert same_connection[0][1] == "PRAGMA synchronous=FULL"
    assert [s for i, s in same_connection if i > position and s == "COMMIT"], same_connection
    assert _read(_repo(server), "main", "data/batch.parquet") == payload
    assert not list(objects.glob(".upload-*"))  # no temporary file left behind


# -- concurrency -------------------------------------------------------------------------------


def test_concurrent_merges_into_main_keep_every_file(server: LocalServerThread) -> None:
    repo = _repo(server)
    writers = 8

    def ingest(index: int) -> str:
        branch = repo.branch(f"ingest-{index}").create(source_reference="main")
        branch.object(f"data/part-{index}.csv").upload(data=f"rows {index}".encode(), mode="wb")
        branch.commit(message=f"batch {index}")
        return branch.merge_into(repo.branch("main"), message=f"merge {index}")

    with ThreadPoolExecutor(max_workers=writers) as pool:
        merges = list(pool.map(ingest, range(writers)))

    main = repo.branch("main")
    paths = sorted(o.path for o in main.objects(prefix="data/"))
    assert paths == sorted(f"data/part-{i}.csv" for i in range(writers))
    log = list(main.log(first_parent=True, max_amount=writers + 1))
    # Every merge is on main's first-parent line exactly once, and the line ends at the root.
    assert sorted(c.id for c in log[:writers]) == sorted(merges)
    assert log[writers].message == "Repository created"
    for index in range(writers):
        assert _read(repo, "main", f"data/part-{index}.csv") == f"rows {index}".encode()


def test_concurrent_commits_on_one_branch_lose_no_write(server: LocalServerThread) -> None:
    repo = _repo(server)
    main = repo.branch("main")
    barrier = threading.Barrier(2)

    def upload_and_commit(index: int) -> str:
        main.object(f"data/{index}.csv").upload(data=str(index).encode(), mode="wb")
        barrier.wait()
        try:
            return main.commit(message=f"commit {index}").id
        except BadRequestException as exc:  # the other commit took both files: "no changes"
            return f"error: {exc.body['message']}"

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(upload_and_commit, range(2)))

    landed = [o for o in outcomes if not o.startswith("error")]
    assert landed, outcomes
    assert all("no changes" in o for o in outcomes if o.startswith("error"))
    assert list(main.uncommitted()) == []
    assert {_read(repo, "main", f"data/{i}.csv") for i in range(2)} == {b"0", b"1"}


def test_upload_during_a_commit_stays_staged(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create_repository("housing", "local://housing", committer="admin")
    first = ObjectEntry(*store.ingest([b"first"]), mtime=1)
    store.put_object("housing", "main", "a.csv", first)
    draft = store.prepare_commit("housing", "main", message="a", metadata=None, committer="t")
    late = ObjectEntry(*store.ingest([b"late"]), mtime=2)
    store.put_object("housing", "main", "a.csv", late)  # lands between prepare and apply
    store.put_object("housing", "main", "b.csv", late)

    store.apply_commit(draft)

    assert store.stat("housing", draft.commit.id, "a.csv") == first
    assert [d.path for d in store.diff_uncommitted("housing", "main")] == ["a.csv", "b.csv"]


# -- path safety -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "",
        "../x",
        "a/../../x",
        "a/..",
        "/abs",
        "\\\\host\\share",
        "C:/x",
        "a\\..\\x",
        "a\x00b",
        "p" * 1025,
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        validate_path(path)
    assert repr(path)[:40].strip("'") in str(caught.value) or not path


@pytest.mark.parametrize("path", ["a", "a/b.csv", "a/..b/c", "..data", "a/./b", "dir/"])
def test_ordinary_paths_pass(path: str) -> None:
    assert validate_path(path) == path


def test_unsafe_path_is_400_naming_it(server: LocalServerThread) -> None:
    main = _repo(server).branch("main")
    for path in ("../../etc/passwd", "data/../../x"):
        with pytest.raises(BadRequestException) as caught:
            main.object(path).upload(data=b"x", mode="wb")
        assert path in caught.value.body["message"]
    assert list(main.uncommitted()) == []


# -- hooks: branches and tags ------------------------------------------------------------------


def test_tag_and_branch_hooks_carry_lakefs_fields(
    server: LocalServerThread, receiver: WebhookReceiver
) -> None:
    repo = _repo(server)
    events = ["pre-create-tag", "post-create-tag", "pre-create-branch", "post-create-branch"]
    _install_action(
        repo, "refs", _webhook_action("refs", [*events, "pre-delete-branch"], receiver.url)
    )
    head = repo.branch("main").get_commit().id

    repo.tag("v1").create("main")
    repo.branch("feature").create(source_reference="main")
    repo.branch("feature").delete()

    receiver.wait_for(5)
    server.wait_idle()  # the post-* hooks ended: no further call is on its way
    calls = {c["json"]["event_type"]: c["json"] for c in receiver.calls}
    assert len(receiver.calls) == 5  # one call per event, none twice
    assert set(calls) == {*events, "pre-delete-branch"}
    tag = calls["pre-create-tag"]
    assert (tag["tag_id"], tag["commit_id"], tag["source_ref"]) == ("v1", head, head)
    assert "branch_id" not in tag  # lakeFS's EventInfo omits the empty branch of a tag event
    assert calls["post-create-tag"]["tag_id"] == "v1"
    branch = calls["pre-create-branch"]
    assert (branch["branch_id"], branch["source_ref"], branch["commit_id"]) == (
        "feature",
        "main",
        head,
    )
    assert "tag_id" not in branch
    deleted = calls["pre-delete-branch"]
    assert (deleted["branch_id"], deleted["source_ref"]) == ("feature", head)
    assert "commit_id" not in deleted


def test_failing_pre_create_tag_hook_creates_no_tag(
    server: LocalServerThread, receiver: WebhookReceiver
) -> None:
    receiver.status = 500
    repo = _repo(server)
    _install_action(repo, "guard", _webhook_action("guard", ["pre-create-tag"], receiver.url))
    with pytest.raises(ServerException) as caught:
        repo.tag("v1").create("main")
    assert caught.value.status_code == 412
    assert "pre-create-tag hook aborted" in caught.value.body["message"]
    assert list(repo.tags()) == []


def test_branches_filter_is_refused_on_tag_events() -> None:
    with pytest.raises(ActionError, match="not supported in tag event types"):
        parse_action(b"name: tags\non:\n  pre-create-tag:\n    branches: [main]\nhooks: []\n")


# -- hooks: faults -----------------------------------------------------------------------------


def test_pre_commit_hook_endpoint_down_blocks_the_commit(server: LocalServerThread) -> None:
    repo = _repo(server)
    dead_url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    action = _webhook_action("down", ["pre-commit"], dead_url, branches="[ingest]")
    _install_action(repo, "down", action)
    ingest = repo.branch("ingest").create(source_reference="main")
    head = ingest.get_commit().id
    ingest.object("data/x.csv").upload(data=b"x", mode="wb")

    with pytest.raises(ServerException) as caught:
        ingest.commit(message="blocked")
    assert caught.value.status_code == 412
    assert "pre-commit hook aborted" in caught.value.body["message"]
    assert "connect: connection refused" in caught.value.body["message"]  # Go's dial error
    assert ingest.get_commit().id == head
    assert [d.path for d in ingest.uncommitted()] == ["data/x.csv"]  # staged data kept
    assert _runs(server) == [("pre-commit", "failed")]


def test_slow_pre_merge_hook_times_out_and_blocks(
    server: LocalServerThread, receiver: WebhookReceiver
) -> None:
    repo = _repo(server)
    _install_action(
        repo, "slow", _webhook_action("slow", ["pre-merge"], receiver.url, timeout="500ms")
    )
    head = repo.branch("main").get_commit().id
    ingest = repo.branch("ingest").create(source_reference="main")
    ingest.object("data/x.csv").upload(data=b"x", mode="wb")
    ingest.commit(message="x")

    receiver.answering.clear()  # the hook gets no answer until the merge has been refused
    try:
        with pytest.raises(ServerException) as caught:
            ingest.merge_into(repo.branch("main"))
        # Refused while the receiver still holds its answer: the hook's timeout ended the wait.
        assert caught.value.status_code == 412
        assert [call["json"]["event_type"] for call in receiver.calls] == ["pre-merge"]
    finally:
        receiver.answering.set()
    assert repo.branch("main").get_commit().id == head


def test_failing_post_commit_hook_is_recorded_and_the_commit_stays(
    server: LocalServerThread, receiver: WebhookReceiver
) -> None:
    receiver.status = 503
    repo = _repo(server)
    action = _webhook_action("after", ["post-commit"], receiver.url, branches="[ingest]")
    _install_action(repo, "after", action)
    main = repo.branch("ingest").create(source_reference="main")
    main.object("data/x.csv").upload(data=b"x", mode="wb")
    commit_id = main.commit(message="kept").id

    receiver.wait_for(1)
    server.wait_idle()  # the hook's run is recorded after its answer arrived
    assert _runs(server) == [("post-commit", "failed")]
    assert main.get_commit().id == commit_id


# -- hooks: secrets and filters ----------------------------------------------------------------


def test_env_templates_render_only_prefixed_variables(
    server: LocalServerThread, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKEFSACTION_HOOK_SECRET", HEADER_SECRET)
    repo = _repo(server)
    action = _webhook_action("notify", ["post-commit"], receiver.url) + (
        "      headers:\n"
        '        X-Lakeloop-Secret: "{{ ENV.LAKEFSACTION_HOOK_SECRET }}"\n'
        '        X-Unprefixed: "{{ ENV.HOME }}"\n'
    )
    _install_action(repo, "notify", action)
    headers = receiver.wait_for(1)[0]["headers"]
    assert headers["X-Lakeloop-Secret"] == HEADER_SECRET
    assert headers["X-Unprefixed"] == ""  # outside LAKEFSACTION_: rendered empty


def test_branch_filter_that_does_not_match_fires_nothing(
    server: LocalServerThread, receiver: WebhookReceiver
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
    server.wait_idle()  # the post-commit and post-merge runs have looked at the action and ended
    assert receiver.calls == []
    assert _runs(server) == []


def test_go_durations() -> None:
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration(None) == 60


def test_tag_ids_are_validated(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create_repository("housing", "local://housing", committer="admin")
    # lakeFS's ValidateTagID: git's rules, but '~' allowed and '/' refused.
    for bad in ("", "@", "a..b", "v1/rc-1", "x@{1}", "v^1", "has space", "x.lock", "x."):
        with pytest.raises(BadRequestError):
            store.prepare_tag("housing", bad, "main")
    head = store.get_branch("housing", "main")
    for good in ("v1.0-rc-1", "-x", "v1~2", "release@2026"):
        assert store.prepare_tag("housing", good, "main") == head
    store.insert_tag("housing", "v1.0-rc-1", head)
    assert store.resolve("housing", "v1.0-rc-1").commit_id == head
