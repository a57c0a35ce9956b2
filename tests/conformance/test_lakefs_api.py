"""What lakeloop relies on from lakeFS, driven through the official SDK against each target."""

from __future__ import annotations

import uuid

import lakefs
import pytest
from lakefs.exceptions import (
    BadRequestException,
    ConflictException,
    NotAuthorizedException,
    NotFoundException,
    ServerException,
)

from lakefs_local.testing import WebhookReceiver
from tests.conformance.conftest import LakeFSTarget

MERGE_STRATEGY_KEY = ".lakefs.merge.strategy"  # graveler.MergeStrategyMetadataKey


def _read(repository: lakefs.Repository, ref: str, path: str) -> bytes:
    return repository.ref(ref).object(path).reader(mode="rb").read()  # type: ignore[return-value]


def _commit_files(branch: lakefs.Branch, files: dict[str, bytes], message: str) -> str:
    for path, data in files.items():
        branch.object(path).upload(data=data, mode="wb")
    return branch.commit(message=message).id


def _install_action(repository: lakefs.Repository, name: str, body: str) -> str:
    main = repository.branch("main")
    main.object(f"_lakefs_actions/{name}.yaml").upload(data=body, mode="w")
    return main.commit(message=f"install {name}").id


# -- repositories and branches -----------------------------------------------------------------


def test_repository_create_with_exist_ok(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository
) -> None:
    again = lakefs.Repository(repo.id, client=lakefs_target.client()).create(
        storage_namespace=repo.properties.storage_namespace, exist_ok=True
    )
    assert again.properties.default_branch == "main"
    with pytest.raises(ConflictException):
        lakefs.Repository(repo.id, client=lakefs_target.client()).create(
            storage_namespace=repo.properties.storage_namespace
        )
    assert repo.id in {
        r.id for r in lakefs.repositories(client=lakefs_target.client(), prefix="conf-")
    }


def test_branches_create_list_delete(repo: lakefs.Repository) -> None:
    head = repo.branch("main").get_commit().id
    feature = repo.branch("feature-1").create(source_reference="main")
    assert feature.get_commit().id == head
    assert {b.id for b in repo.branches()} == {"main", "feature-1"}
    with pytest.raises(ConflictException):
        repo.branch("feature-1").create(source_reference="main")
    assert repo.branch("feature-1").create(source_reference="main", exist_ok=True).id == "feature-1"
    feature.delete()
    assert {b.id for b in repo.branches()} == {"main"}


# -- objects, commits, tags --------------------------------------------------------------------


def test_upload_commit_with_metadata_and_read_at_commit(repo: lakefs.Repository) -> None:
    branch = repo.branch("ingest").create(source_reference="main")
    branch.object("data/a.parquet").upload(data=b"first", mode="wb", metadata={"rows": "1"})
    commit_id = branch.commit(message="batch 1", metadata={"source": "conformance"}).id

    commit = repo.ref(commit_id).get_commit()
    assert (commit.message, commit.metadata) == ("batch 1", {"source": "conformance"})
    branch.object("data/a.parquet").upload(data=b"rewritten", mode="wb")
    branch.commit(message="batch 2")
    assert _read(repo, commit_id, "data/a.parquet") == b"first"
    assert _read(repo, "ingest", "data/a.parquet") == b"rewritten"
    stat = repo.ref(commit_id).object("data/a.parquet").stat()
    assert stat.size_bytes == len(b"first")
    assert stat.metadata == {"rows": "1"}
    assert [c.message for c in branch.log(max_amount=2)] == ["batch 2", "batch 1"]


def test_partial_reads_with_range(repo: lakefs.Repository) -> None:
    main = repo.branch("main")
    commit_id = _commit_files(main, {"blob.bin": bytes(range(256)) * 8}, "blob")
    with repo.ref(commit_id).object("blob.bin").reader(mode="rb") as reader:
        reader.seek(250)
        assert reader.read(10) == bytes(range(250, 256)) + bytes(range(4))
        assert reader.read() == (bytes(range(256)) * 8)[260:]


def test_tags_are_refs(repo: lakefs.Repository) -> None:
    main = repo.branch("main")
    first = _commit_files(main, {"data/x.csv": b"v1"}, "v1")
    tag = repo.tag("v1").create(first)
    _commit_files(main, {"data/x.csv": b"v2"}, "v2")

    assert tag.get_commit().id == first
    assert _read(repo, "v1", "data/x.csv") == b"v1"
    assert [c.message for c in repo.tag("v1").log(max_amount=1)] == ["v1"]
    assert [(t.id, t.get_commit().id) for t in repo.tags()] == [("v1", first)]
    with pytest.raises(ConflictException):
        repo.tag("v1").create(main)
    repo.tag("v1").delete()
    assert list(repo.tags()) == []
    with pytest.raises(NotFoundException):
        repo.tag("v1").get_commit()


def test_list_with_prefix_and_pagination(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository
) -> None:
    main = repo.branch("main")
    files = {f"data/part-{i}.parquet": bytes([i]) for i in range(5)}
    _commit_files(main, {**files, "other/readme.txt": b"x"}, "files")

    paths = [o.path for o in main.objects(prefix="data/", amount=2)]  # three pages of two
    assert paths == sorted(files)
    page = lakefs_target.client().sdk_client.objects_api.list_objects(
        repo.id, "main", prefix="data/", amount=2
    )
    assert page.pagination.has_more
    assert [o.path for o in page.results] == ["data/part-0.parquet", "data/part-1.parquet"]
    assert [o.path for o in main.objects(delimiter="/")] == ["data/", "other/"]


def test_diff_between_refs(repo: lakefs.Repository) -> None:
    main = repo.branch("main")
    before = _commit_files(main, {"keep.csv": b"k", "change.csv": b"1", "drop.csv": b"d"}, "base")
    main.object("change.csv").upload(data=b"2", mode="wb")
    main.object("drop.csv").delete()
    main.object("add.csv").upload(data=b"a", mode="wb")
    after = main.commit(message="edit").id

    changes = {(d.path, d.type) for d in repo.ref(before).diff(after)}
    assert changes == {("add.csv", "added"), ("change.csv", "changed"), ("drop.csv", "removed")}


def test_delete_object(repo: lakefs.Repository) -> None:
    main = repo.branch("main")
    before = _commit_files(main, {"a.csv": b"a", "b.csv": b"b"}, "two")
    main.object("a.csv").delete()
    assert [d.path for d in main.uncommitted()] == ["a.csv"]
    main.commit(message="drop a")
    assert not main.object("a.csv").exists()
    assert _read(repo, before, "a.csv") == b"a"


# -- merge -------------------------------------------------------------------------------------


def test_merge_brings_changes_with_a_two_parent_commit(repo: lakefs.Repository) -> None:
    main = repo.branch("main")
    _commit_files(main, {"data/base.csv": b"base"}, "base")
    ingest = repo.branch("ingest").create(source_reference="main")
    _commit_files(ingest, {"data/new.csv": b"new"}, "new batch")
    _commit_files(main, {"docs/readme.md": b"main-only"}, "docs")  # main moved meanwhile

    merge_id = ingest.merge_into(main, message="publish", metadata={"by": "conformance"})

    merged = repo.ref(merge_id).get_commit()
    assert len(merged.parents) == 2
    # graveler.Merge adds the strategy under .lakefs.merge.strategy ("default" when none given).
    assert merged.metadata == {"by": "conformance", MERGE_STRATEGY_KEY: "default"}
    assert main.get_commit().id == merge_id
    assert _read(repo, "main", "data/new.csv") == b"new"
    assert _read(repo, "main", "docs/readme.md") == b"main-only"


def test_merge_conflict_is_409_and_leaves_destination(repo: lakefs.Repository) -> None:
    main = repo.branch("main")
    _commit_files(main, {"data/x.csv": b"v0"}, "v0")
    side = repo.branch("side").create(source_reference="main")
    _commit_files(side, {"data/x.csv": b"side"}, "side edit")
    head = _commit_files(main, {"data/x.csv": b"main"}, "main edit")

    with pytest.raises(ConflictException) as caught:
        side.merge_into(main)
    # lakeFS's MergeIntoBranch answers a conflict with an empty MergeResult, not an Error.
    assert caught.value.body == {"reference": ""}
    assert main.get_commit().id == head


# -- errors ------------------------------------------------------------------------------------


def test_missing_things_are_404(lakefs_target: LakeFSTarget, repo: lakefs.Repository) -> None:
    client = lakefs_target.client()
    with pytest.raises(NotFoundException):
        lakefs.Repository(f"missing-{uuid.uuid4().hex[:8]}", client=client).branch(
            "main"
        ).get_commit()
    with pytest.raises(NotFoundException):
        repo.branch("no-such-branch").get_commit()
    with pytest.raises(NotFoundException):
        repo.ref("no-such-ref").object("x").reader().read()
    with pytest.raises(NotFoundException):
        repo.branch("main").object("missing.csv").stat()
    assert not repo.branch("main").object("missing.csv").exists()


def test_wrong_credentials_are_401(lakefs_target: LakeFSTarget, repo: lakefs.Repository) -> None:
    bad = lakefs.Repository(repo.id, client=lakefs_target.client(secret="wrong-secret-0000"))
    with pytest.raises(NotAuthorizedException):
        bad.branch("main").get_commit()


@pytest.mark.parametrize("path", ["../escape.csv", "data/../../escape.csv", "/etc/passwd"])
def test_paths_cannot_leave_the_repository(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository, path: str
) -> None:
    main = repo.branch("main")
    if lakefs_target.is_local:
        # The local server refuses such keys outright (see store.validate_path for why).
        with pytest.raises(BadRequestException) as caught:
            main.object(path).upload(data=b"x", mode="wb")
        assert path in caught.value.body["message"]
        assert list(main.uncommitted()) == []
        return
    # Real lakeFS stores them as opaque keys: the key round-trips literally and nothing else moves.
    main.object(path).upload(data=b"x", mode="wb")
    assert [d.path for d in main.uncommitted()] == [path]


# -- actions -----------------------------------------------------------------------------------


def test_post_merge_webhook_payload(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
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
""",
    )
    ingest = repo.branch("ingest").create(source_reference="main")
    _commit_files(ingest, {"data/new.csv": b"rows"}, "batch")
    merge_id = ingest.merge_into(repo.branch("main"), message="publish", metadata={"k": "v"})

    call = receiver.wait_for(1)[0]
    payload = call["json"]
    assert payload["event_type"] == "post-merge"
    assert payload["action_name"] == "notify on merge"
    assert payload["hook_id"] == "notify_gateway"
    assert payload["repository_id"] == repo.id
    assert payload["branch_id"] == "main"
    assert payload["commit_id"] == merge_id
    assert payload["source_ref"] == merge_id
    assert payload["commit_message"] == "publish"
    assert payload["commit_metadata"] == {"k": "v", MERGE_STRATEGY_KEY: "default"}
    assert payload["committer"]
    assert payload["event_time"].endswith("Z")
    assert call["path"] == "/lakefs?source=lakefs"


def test_failing_pre_merge_hook_blocks_with_412(
    repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    receiver.status, receiver.reply = 400, b"expectation failed: price_range"
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
    ingest = repo.branch("ingest").create(source_reference="main")
    source_commit = _commit_files(ingest, {"data/bad.csv": b"bad rows"}, "bad batch")

    with pytest.raises(ServerException) as caught:
        ingest.merge_into(repo.branch("main"))
    assert caught.value.status_code == 412
    # graveler.Merge wraps its branch update's error (graveler.go: "update branch %s: %w").
    assert caught.value.body["message"].startswith("update branch main: pre-merge hook aborted")
    assert repo.branch("main").get_commit().id == main_head
    payload = receiver.calls[0]["json"]
    assert (payload["event_type"], payload["source_ref"]) == ("pre-merge", source_commit)
    # graveler.Merge adds the merge commit before the pre-merge hook: the hook sees its id,
    # although the branch never moves to it.
    assert len(payload["commit_id"]) == len(main_head)
    assert payload["commit_id"] not in (main_head, source_commit)
