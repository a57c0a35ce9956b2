"""Refs, diff, merge and their errors as lakeFS v1 has them, driven through the SDK per target.

Each expectation names the lakeFS source it follows (pkg/graveler, pkg/api/controller.go), so a
difference found against a real lakeFS is a bug in the local server, not in the test.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import lakefs
import pytest
from lakefs.exceptions import (
    BadRequestException,
    ConflictException,
    ForbiddenException,
    NotFoundException,
    ServerException,
)
from lakefs_sdk.exceptions import ApiException
from lakefs_sdk.models import BranchProtectionRule, PathList

from lakefs_local.testing import WebhookReceiver
from tests.conformance.conftest import LakeFSTarget

MERGE_STRATEGY_KEY = ".lakefs.merge.strategy"  # graveler.MergeStrategyMetadataKey


def _commit_files(branch: lakefs.Branch, files: dict[str, bytes], message: str) -> str:
    for path, data in files.items():
        branch.object(path).upload(data=data, mode="wb")
    return branch.commit(message=message).id


def _diff(
    repo: lakefs.Repository, left: str, right: str, kind: str | None = None
) -> set[tuple[str, str]]:
    """``kind`` is DiffRefs' ``type`` query parameter; None leaves the server's default."""
    changes = repo.ref(left).diff(right) if kind is None else repo.ref(left).diff(right, type=kind)
    return {(d.path, d.type) for d in changes}


def _install_merge_hook(repo: lakefs.Repository, url: str) -> None:
    """A webhook on pre-merge and post-merge into main (installing it merges nothing)."""
    action = f"""
name: check merges
on:
  pre-merge:
    branches: [main]
  post-merge:
    branches: [main]
hooks:
  - id: check
    type: webhook
    properties:
      url: {url}/merge
      timeout: 30s
"""
    _commit_files(repo.branch("main"), {"_lakefs_actions/check.yaml": action.encode()}, "hook")


# -- merge commits and their hook records ------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "recorded"),
    [(None, "default"), ("source-wins", "source-wins"), ("dest-wins", "dest-wins")],
)
def test_merge_commit_records_its_strategy(
    repo: lakefs.Repository, strategy: str | None, recorded: str
) -> None:
    main = repo.branch("main")
    _commit_files(main, {"x.csv": b"base"}, "base")
    side = repo.branch("side").create(source_reference="main")
    _commit_files(side, {"x.csv": b"side"}, "side")
    if strategy is not None:
        _commit_files(main, {"x.csv": b"main"}, "main")  # a conflict the strategy settles

    merge_id = side.merge_into(main, strategy=strategy, metadata={"by": "test"})

    metadata = repo.ref(merge_id).get_commit().metadata
    assert metadata == {"by": "test", MERGE_STRATEGY_KEY: recorded}


def test_merge_hooks_see_the_merge_commit_id(
    repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    """graveler.Merge adds the merge commit before running pre-merge hooks: the pre-merge
    record carries its id, the source's commit as source ref; post-merge carries the merge
    commit as both (esti/hooks.go checks the same)."""
    main = repo.branch("main")
    _install_merge_hook(repo, receiver.url)
    ingest = repo.branch("ingest").create(source_reference="main")
    source_commit = _commit_files(ingest, {"data/new.csv": b"rows"}, "batch")

    merge_id = ingest.merge_into(main)

    calls = {c["json"]["event_type"]: c["json"] for c in receiver.wait_for(2)}
    pre, post = calls["pre-merge"], calls["post-merge"]
    assert (pre["commit_id"], pre["source_ref"], pre["branch_id"]) == (
        merge_id,
        source_commit,
        "main",
    )
    assert pre["commit_message"] == "Merge 'ingest' into 'main'"
    assert pre["commit_metadata"] == {MERGE_STRATEGY_KEY: "default"}
    assert (post["commit_id"], post["source_ref"]) == (merge_id, merge_id)
    assert pre["merge_source"] == post["merge_source"] == "ingest"  # as esti/hooks.go expects


# -- diff ----------------------------------------------------------------------------------------


def test_diff_is_three_dot_by_default(repo: lakefs.Repository) -> None:
    """DiffRefs defaults to three_dot (Catalog.Compare): what merging right into left would
    change, so main's own later commits do not show; two_dot shows both sides."""
    main = repo.branch("main")
    _commit_files(main, {"shared.csv": b"0", "gone.csv": b"g"}, "base")
    branch = repo.branch("feature").create(source_reference="main")
    branch.object("gone.csv").delete()
    _commit_files(branch, {"feature.csv": b"f", "shared.csv": b"1"}, "feature work")
    _commit_files(main, {"main-only.csv": b"m"}, "main moved on")

    assert _diff(repo, "main", "feature") == {
        ("feature.csv", "added"),
        ("shared.csv", "changed"),
        ("gone.csv", "removed"),
    }
    assert _diff(repo, "main", "feature", "two_dot") == {
        ("feature.csv", "added"),
        ("shared.csv", "changed"),
        ("gone.csv", "removed"),
        ("main-only.csv", "removed"),
    }


def test_three_dot_diff_marks_conflicts(repo: lakefs.Repository) -> None:
    main = repo.branch("main")
    _commit_files(main, {"x.csv": b"0"}, "base")
    side = repo.branch("side").create(source_reference="main")
    _commit_files(side, {"x.csv": b"side"}, "side")
    _commit_files(main, {"x.csv": b"main"}, "main")

    assert _diff(repo, "main", "side") == {("x.csv", "conflict")}


def test_branch_refs_in_a_diff_read_committed_data(repo: lakefs.Repository) -> None:
    """A branch in a diff is its head commit (graveler dereferences commits); only ``branch$``
    on the right of a two_dot diff adds its staging area, and ``$`` is refused where a commit
    is needed."""
    main = repo.branch("main")
    base = _commit_files(main, {"a.csv": b"a"}, "base")
    main.object("staged.csv").upload(data=b"s", mode="wb")

    assert _diff(repo, base, "main") == set()
    assert _diff(repo, base, "main", "two_dot") == set()
    assert _diff(repo, base, "main$", "two_dot") == {("staged.csv", "added")}
    for left, right, kind in [(base, "main$", "three_dot"), ("main$", base, "two_dot")]:
        with pytest.raises(BadRequestException) as caught:
            _diff(repo, left, right, kind)
        assert "reference to staging area with $ is not a commit" in caught.value.body["message"]


def test_objects_read_through_a_branch_include_staging_but_not_with_at(
    repo: lakefs.Repository,
) -> None:
    """Object reads use the staging token of a plain branch ref; ``branch@`` has none."""
    main = repo.branch("main")
    _commit_files(main, {"a.csv": b"committed"}, "base")
    main.object("a.csv").upload(data=b"staged", mode="wb")

    assert repo.ref("main").object("a.csv").reader(mode="rb").read() == b"staged"
    assert repo.ref("main@").object("a.csv").reader(mode="rb").read() == b"committed"
    assert repo.ref("main$").object("a.csv").reader(mode="rb").read() == b"staged"


# -- merge rules ---------------------------------------------------------------------------------


def test_merge_into_a_dirty_destination_is_refused(repo: lakefs.Repository) -> None:
    """graveler.Merge: prepareForCommitIDUpdate refuses uncommitted changes (ErrDirtyBranch)."""
    main = repo.branch("main")
    side = repo.branch("side").create(source_reference="main")
    _commit_files(side, {"side.csv": b"s"}, "side")
    main.object("wip.csv").upload(data=b"w", mode="wb")
    head = main.get_commit().id

    with pytest.raises(BadRequestException) as caught:
        side.merge_into(main)
    assert caught.value.body["message"] == "uncommitted changes (dirty branch)"
    assert main.get_commit().id == head
    assert [d.path for d in main.uncommitted()] == ["wip.csv"]


def test_merge_takes_the_source_committed_data_only(repo: lakefs.Repository) -> None:
    """The source is dereferenced to its commit: its staged changes neither block nor ride."""
    main = repo.branch("main")
    side = repo.branch("side").create(source_reference="main")
    _commit_files(side, {"done.csv": b"d"}, "done")
    side.object("wip.csv").upload(data=b"w", mode="wb")

    side.merge_into(main)

    assert main.object("done.csv").exists()
    assert not main.object("wip.csv").exists()
    assert [d.path for d in side.uncommitted()] == ["wip.csv"]


def test_merge_without_changes_is_400_unless_allowed(repo: lakefs.Repository) -> None:
    """committedManager.Merge: the source's tree equal to the merge base's is ErrNoChanges."""
    main = repo.branch("main")
    _commit_files(main, {"a.csv": b"a"}, "base")
    side = repo.branch("side").create(source_reference="main")
    head = main.get_commit().id

    with pytest.raises(BadRequestException) as caught:
        side.merge_into(main)
    assert caught.value.body["message"] == "update branch main: no changes"
    assert main.get_commit().id == head

    merge_id = side.merge_into(main, allow_empty=True)
    assert repo.ref(merge_id).get_commit().parents == [head, head]


def test_merge_of_a_staging_ref_is_refused(repo: lakefs.Repository) -> None:
    side = repo.branch("side").create(source_reference="main")
    _commit_files(side, {"a.csv": b"a"}, "a")
    with pytest.raises(BadRequestException) as caught:
        repo.ref("side$").merge_into(repo.branch("main"))
    assert "reference to staging area with $ is not a commit" in caught.value.body["message"]


def test_concurrent_merges_retry_and_rerun_the_pre_merge_hook(
    repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    """Merges are optimistic (graveler.Merge inside retryBranchUpdate): both compute their
    commit against the same head while the hook holds them, one moves the branch, the other
    finds it moved, computes again and runs its pre-merge hook again."""
    main = repo.branch("main")
    _install_merge_hook(repo, receiver.url)
    branches = []
    for name in ("left", "right"):
        branch = repo.branch(name).create(source_reference="main")
        _commit_files(branch, {f"data/{name}.csv": name.encode()}, name)
        branches.append(branch)

    def pre_merge_calls() -> list[dict[str, str]]:
        return [c["json"] for c in receiver.calls if c["json"]["event_type"] == "pre-merge"]

    receiver.answering.clear()  # hold both pre-merge hooks until both merges are in them
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            merges = [pool.submit(b.merge_into, main) for b in branches]
            receiver.wait_for(2, timeout=30)
            assert len(pre_merge_calls()) == 2
            receiver.answering.set()
            merge_ids = [future.result(timeout=120) for future in merges]
    finally:
        receiver.answering.set()

    assert main.object("data/left.csv").exists()
    assert main.object("data/right.csv").exists()
    first_parents = [c.id for c in main.log(first_parent=True, max_amount=2)]
    assert sorted(first_parents) == sorted(merge_ids)
    calls = pre_merge_calls()
    assert len(calls) >= 3  # at least one merge ran its hook again
    assert set(merge_ids) <= {c["commit_id"] for c in calls}  # each try names its own commit


# -- errors --------------------------------------------------------------------------------------


def test_the_default_branch_cannot_be_deleted(repo: lakefs.Repository) -> None:
    """graveler.DeleteBranch: ErrDeleteDefaultBranch, which the API answers 403."""
    with pytest.raises(ForbiddenException) as caught:
        repo.branch("main").delete()
    assert caught.value.body["message"] == "cannot delete repository default branch"
    assert repo.branch("main").get_commit().id


@pytest.mark.parametrize("tag_id", ["release/v1", "v1..2", "v1^", "x.lock", "@"])
def test_invalid_tag_ids_are_400(repo: lakefs.Repository, tag_id: str) -> None:
    """graveler.ValidateTagID (git's ref rules, '/' refused too), via the catalog's Validate."""
    with pytest.raises(BadRequestException) as caught:
        repo.tag(tag_id).create("main")
    assert caught.value.body["message"] == "argument tagID: tag id: invalid value: validation error"
    assert list(repo.tags()) == []


@pytest.mark.parametrize("name", ["données", "bad/branch", "v1.0", "-x", "a b"])
def test_branch_ids_are_lakefs_ascii_words(repo: lakefs.Repository, name: str) -> None:
    """graveler.ValidateBranchID: ``^\\w[-\\w]*$`` with Go's ASCII ``\\w`` (pkg/validator), checked
    by the catalog's CreateBranch as argument "branch"; no length limit."""
    with pytest.raises(BadRequestException) as caught:
        repo.branch(name).create(source_reference="main")
    assert caught.value.body["message"] == (
        "argument branch: branch id: invalid value: validation error"
    )
    assert repo.branch("a" * 200 + "_ok-1").create(source_reference="main").get_commit()


def test_a_tag_cannot_take_a_branch_name(repo: lakefs.Repository) -> None:
    """Catalog.CreateTag refuses a tag named like a branch (the two would shadow each other)."""
    repo.branch("feature").create(source_reference="main")
    with pytest.raises(ConflictException) as caught:
        repo.tag("feature").create("main")
    assert caught.value.body["message"] == "branch name feature: conflict found"


def test_missing_merge_source_is_404(repo: lakefs.Repository) -> None:
    with pytest.raises(NotFoundException):
        repo.ref("no-such-branch").merge_into(repo.branch("main"))


def test_a_merge_holding_its_hook_does_not_block_other_reads(
    repo: lakefs.Repository, receiver: WebhookReceiver
) -> None:
    """No branch lock is held while a pre-merge hook runs: the branch stays readable."""
    main = repo.branch("main")
    _install_merge_hook(repo, receiver.url)
    side = repo.branch("side").create(source_reference="main")
    _commit_files(side, {"s.csv": b"s"}, "s")
    receiver.answering.clear()
    done = threading.Event()

    def merge_side() -> None:
        side.merge_into(main)
        done.set()

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            merge = pool.submit(merge_side)
            receiver.wait_for(1, timeout=30)
            assert main.get_commit().id  # answered while the merge waits on its hook
            assert not done.is_set()
            receiver.answering.set()
            merge.result(timeout=60)
    finally:
        receiver.answering.set()
    assert main.object("s.csv").exists()


def test_a_storage_namespace_is_never_reused(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository
) -> None:
    """CreateRepository's ensureStorageNamespace refuses a namespace holding lakeFS's
    ``_lakefs/dummy`` object, which stays when its repository is deleted (400)."""
    client = lakefs_target.client()
    namespace = repo.properties.storage_namespace
    with pytest.raises(BadRequestException) as caught:
        lakefs.Repository(f"{repo.id}-again", client=client).create(storage_namespace=namespace)
    assert "storage namespace already in use" in caught.value.body["message"]

    name = f"conf-{uuid.uuid4().hex[:12]}"
    fresh = f"{lakefs_target.storage_namespace.rstrip('/')}/{name}"
    lakefs.Repository(name, client=client).create(storage_namespace=fresh).delete()
    with pytest.raises(BadRequestException) as caught:
        lakefs.Repository(name, client=client).create(storage_namespace=fresh)
    assert "storage namespace already in use" in caught.value.body["message"]
    assert name not in {r.id for r in lakefs.repositories(client=client, prefix=name)}


# -- branch protection ---------------------------------------------------------------------------


def _protect(lakefs_target: LakeFSTarget, repo: lakefs.Repository, *patterns: str) -> str:
    """Set the rules with the current ETag; wait until they apply; return the new ETag.

    lakeFS reads the rules for enforcement through a cache that expires after a second
    (settings.Manager.Get), so the wait is what a client of a real lakeFS must do too; a
    refused empty commit shows they apply (a protected branch refuses commits first)."""
    api = lakefs_target.client().sdk_client.repositories_api
    etag = api.get_branch_protection_rules_with_http_info(repo.id).headers["ETag"]
    rules = [BranchProtectionRule(pattern=pattern) for pattern in patterns]
    api.set_branch_protection_rules(repo.id, rules, if_match=etag)
    probe = repo.branch(patterns[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            probe.commit(message="probe: is the branch protected yet?", allow_empty=True)
        except ForbiddenException:
            break
        time.sleep(0.2)
    response = api.get_branch_protection_rules_with_http_info(repo.id)
    assert sorted(rule.pattern for rule in response.data) == sorted(patterns)
    return str(response.headers["ETag"])


def test_a_protected_branch_takes_merges_but_no_direct_writes(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository
) -> None:
    """graveler.Set/Delete refuse staging writes (ErrWriteToProtectedBranch), graveler.Commit
    refuses commits (ErrCommitToProtectedBranch), both 403; graveler.Merge checks nothing."""
    main = repo.branch("main")
    _commit_files(main, {"old.csv": b"o"}, "before protection")
    _protect(lakefs_target, repo, "main")
    head = main.get_commit().id

    with pytest.raises(ServerException) as refused_upload:  # the SDK's class varies by path
        main.object("direct.csv").upload(data=b"d", mode="wb")
    assert refused_upload.value.status_code == 403
    with pytest.raises(ForbiddenException) as refused_commit:
        main.commit(message="direct", allow_empty=True)
    assert refused_commit.value.body["message"] == "cannot commit to protected branch"
    deleted = lakefs_target.client().sdk_client.objects_api.delete_objects(
        repo.id, "main", PathList(paths=["old.csv"])
    )
    assert [(e.path, e.status_code) for e in deleted.errors] == [("old.csv", 403)]
    assert deleted.errors[0].message == "cannot write to protected branch"
    assert main.get_commit().id == head

    feature = repo.branch("feature").create(source_reference="main")
    _commit_files(feature, {"reviewed.csv": b"r"}, "reviewed change")
    merge_id = feature.merge_into(main)
    assert main.get_commit().id == merge_id
    assert main.object("reviewed.csv").exists()
    assert list(main.uncommitted()) == []


def test_protection_rules_update_only_with_the_current_etag(
    lakefs_target: LakeFSTarget, repo: lakefs.Repository
) -> None:
    """PUT settings/branch_protection with If-Match: a stale ETag is 412 (settings.Manager)."""
    api = lakefs_target.client().sdk_client.repositories_api
    first = _protect(lakefs_target, repo, "main", "release-*")
    assert first

    with pytest.raises(ApiException) as stale:
        api.set_branch_protection_rules(repo.id, [], if_match="0" * 64)
    assert stale.value.status == 412
    api.set_branch_protection_rules(
        repo.id, [BranchProtectionRule(pattern="release-*")], if_match=first
    )
    rules = api.get_branch_protection_rules(repo.id)
    assert [rule.pattern for rule in rules] == ["release-*"]


def test_a_squash_merge_has_one_parent(repo: lakefs.Repository) -> None:
    """graveler.Merge with SquashMerge: the destination's head is the only parent."""
    main = repo.branch("main")
    head = main.get_commit().id
    side = repo.branch("side").create(source_reference="main")
    _commit_files(side, {"a.csv": b"a"}, "a")
    _commit_files(side, {"b.csv": b"b"}, "b")

    merge_id = side.merge_into(main, squash_merge=True)

    assert repo.ref(merge_id).get_commit().parents == [head]
    assert {o.path for o in main.objects()} == {"a.csv", "b.csv"}
