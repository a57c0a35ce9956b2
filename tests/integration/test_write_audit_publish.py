"""Write-audit-publish over HTTP: the real lakeFS SDK, the lakeFS-compatible server running the
installed action files, the gateway's pre-merge data checks (real Great Expectations) and its
post-merge relay (to a stand-in of Prefect's events endpoint; the e2e test uses real Prefect)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lakefs
import pandas as pd
import pytest
from lakefs_sdk import BranchProtectionRule
from litestar import Litestar

from lakeloop import lakefs_client
from lakeloop.ingest import SourceTable, file_sha256, inspect_source, write_parquet
from lakeloop.settings import Settings, load_settings
from tests.utils.bad_batches import BAD_BATCHES, Builder
from tests.utils.fake_prefect import FakePrefectEvents
from tests.utils.local_lakefs import gated_repository
from tests.utils.waiting import DEADLINE_SECONDS, eventually
from tooling import market

pytestmark = pytest.mark.integration

SECRET = "integration-webhook-secret-0123456789"
LAKEFS_SECRET = "integration-lakefs-secret-0123456789"


@dataclass(frozen=True)
class Loop:
    settings: Settings
    client: lakefs.Client
    prefect: FakePrefectEvents
    folder: Path
    lakefs_app: Litestar  # the lakeFS-compatible server, to see when its post-hooks ended

    def main_head(self) -> str:
        repository = lakefs.Repository(self.settings.lakefs.repository, client=self.client)
        return repository.branch(self.settings.lakefs.branch).get_commit().id

    def batch(self, name: str, frame: pd.DataFrame) -> SourceTable:
        return inspect_source(write_parquet(frame, self.folder / f"{name}.parquet"))

    def publish(self, table: SourceTable, name: str) -> lakefs_client.Published:
        return lakefs_client.publish(
            self.client, self.settings, [table], name=name, source="test", dataset_version=1
        )

    def relayed_commits(self) -> list[str]:
        return [event["payload"]["commit_id"] for event in self.prefect.events]

    def wait_idle(self) -> None:
        """Until every post-hook lakeFS fired so far has ended (they run in the background, after
        the commit or merge answered) and the gateway holds nothing for Prefect: only then does
        "nothing was relayed" mean nothing will be, and a count taken is not still growing."""
        self.lakefs_app.state.service.actions.wait_idle(DEADLINE_SECONDS)
        pending = self.settings.state_dir / "spool" / "pending"
        eventually(lambda: not any(pending.glob("*.json")), what="the gateway's spool empty")


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    root = tmp_path_factory.mktemp("wap")
    with gated_repository(root, webhook_secret=SECRET, lakefs_secret=LAKEFS_SECRET) as lake:
        yield Loop(
            settings=lake.settings,
            client=lake.client,
            prefect=lake.prefect,
            folder=root,
            lakefs_app=lake.lakefs_app,
        )


def test_good_batch_lands_on_main_and_is_relayed_to_prefect(loop: Loop) -> None:
    published = loop.publish(loop.batch("good", market.generate_batch(rows=500, seed=1)), "good")
    assert published.merged
    assert loop.main_head() == published.commit_id
    stored = lakefs_client.read_table(
        loop.client, loop.settings, repository="housing", ref=published.commit_id
    )
    assert len(stored) == 500
    commit = lakefs.Repository("housing", client=loop.client).ref(published.commit_id).get_commit()
    assert commit.metadata is not None
    assert commit.metadata["rows"] == "500"
    assert commit.metadata["sha256"] == published.metadata["sha256"]
    eventually(
        lambda: published.commit_id in loop.relayed_commits(),
        what=f"the merge {published.commit_id:.12} relayed to Prefect",
    )
    loop.wait_idle()
    assert loop.relayed_commits().count(published.commit_id) == 1  # once, not once per retry


def test_bad_batch_is_blocked_naming_the_check_and_main_is_untouched(loop: Loop) -> None:
    loop.wait_idle()  # what earlier merges relay has arrived: the count below is final
    before = loop.main_head()
    relayed_before = len(loop.prefect.events)
    bad = market.generate_batch(rows=500, seed=2)
    bad.loc[:99, "median_income"] = -1.0  # a fifth of the rows below the description's bound
    published = loop.publish(loop.batch("bad", bad), "bad")
    assert not published.merged
    assert "median_income" in published.rejection
    assert "column values to be between" in published.rejection
    assert loop.main_head() == before
    rejected = lakefs.Repository("housing", client=loop.client).branch(published.ingest_branch)
    assert rejected.get_commit().metadata["lakeloop.rejected"] == "true"
    assert "median_income" in rejected.get_commit().metadata["lakeloop.reason"]
    loop.wait_idle()
    assert len(loop.prefect.events) == relayed_before  # nothing reached Prefect: no training


def test_unreadable_table_written_around_the_cli_is_blocked(loop: Loop, tmp_path: Path) -> None:
    before = loop.main_head()
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet PAR1")
    table = SourceTable(path=garbage, rows=1, columns=("x",), size=28, sha256="0" * 64)
    published = loop.publish(table, "garbage")
    assert not published.merged
    assert "cannot read" in published.rejection
    assert loop.main_head() == before


def test_two_ingests_at_once_both_land(loop: Loop) -> None:
    tables = [
        loop.batch(f"parallel-{i}", market.generate_batch(rows=300, seed=10 + i)) for i in range(2)
    ]
    rows_before = len(
        lakefs_client.read_table(
            loop.client, loop.settings, repository="housing", ref=loop.settings.lakefs.branch
        )
    )
    results: list[lakefs_client.Published] = []

    def run(index: int) -> None:
        results.append(loop.publish(tables[index], f"parallel-{index}"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [r.merged for r in results] == [True, True]
    on_main = lakefs_client.read_table(
        loop.client, loop.settings, repository="housing", ref=loop.settings.lakefs.branch
    )
    for result in results:
        assert set(result.paths) <= {
            info.path
            for info in lakefs.Repository("housing", client=loop.client)
            .ref("main")
            .objects(prefix="data/")
        }
    assert len(on_main) == rows_before + 600  # both batches, every row of each


def test_unknown_repository_is_a_clear_error(loop: Loop) -> None:
    other = load_settings(
        state_dir=loop.settings.state_dir,
        lakefs={**loop.settings.lakefs.model_dump(), "repository": "no-such-repo"},
    )
    table = loop.batch("orphan", market.generate_batch(rows=50, seed=3))
    with pytest.raises(lakefs_client.LakeFSError, match=r"no-such-repo|not found"):
        lakefs_client.publish(loop.client, other, [table], name="x", source="t", dataset_version=1)


@pytest.mark.parametrize(("name", "case"), BAD_BATCHES.items(), ids=list(BAD_BATCHES))
def test_each_bad_batch_is_blocked_at_the_pre_merge_gate(
    loop: Loop, name: str, case: tuple[Builder, str]
) -> None:
    """The bad-data corpus through lakeFS: the right check named, main untouched, no training."""
    build, expected = case
    loop.wait_idle()  # what earlier merges relay has arrived: the count below is final
    before, relayed_before = loop.main_head(), len(loop.prefect.events)
    path = loop.folder / f"{name.replace(' ', '-')}.csv"
    # CSV, not Parquet: some damage (text in a numeric column) cannot be written as Parquet.
    build(market.generate_batch(rows=2000, seed=42)).to_csv(path, index=False)
    table = SourceTable(
        path=path, rows=2000, columns=(), size=path.stat().st_size, sha256=file_sha256(path)
    )
    published = loop.publish(table, name.replace(" ", "-"))
    assert not published.merged
    assert expected in published.rejection
    assert loop.main_head() == before
    loop.wait_idle()
    assert len(loop.prefect.events) == relayed_before


def test_init_creates_the_repository_in_the_configured_storage_namespace(loop: Loop) -> None:
    """A lakeFS on S3 refuses local:// namespaces: `lakeloop init` uses the configured one."""
    other = load_settings(
        state_dir=loop.settings.state_dir,
        lakefs={
            **loop.settings.lakefs.model_dump(),
            "repository": "on-s3",
            "storage_namespace": "s3://bucket/on-s3",
        },
    )
    created = lakefs_client.ensure_repository(loop.client, other)
    assert created.properties.storage_namespace == "s3://bucket/on-s3"
    assert created.properties.default_branch == other.lakefs.branch
    again = lakefs_client.ensure_repository(loop.client, other)  # idempotent
    assert again.properties.storage_namespace == "s3://bucket/on-s3"


def test_the_failed_checks_come_from_the_hook_run_not_from_the_412(loop: Loop) -> None:
    """lakeFS's 412 names the aborted run and the webhook's status code, never its answer; the
    failed checks reach the rejection (and so `lakeloop ingest`) from the hook run's output."""
    repository = lakefs.Repository(loop.settings.lakefs.repository, client=loop.client)
    bad = market.generate_batch(rows=500, seed=4)
    bad.loc[:99, "median_income"] = -1.0
    branch = repository.branch("direct-bad").create(source_reference=loop.settings.lakefs.branch)
    branch.object("data/direct/bad.parquet").upload(data=bad.to_parquet(index=False), mode="wb")
    branch.commit(message="bad data written around the CLI")
    with pytest.raises(lakefs.exceptions.ServerException) as refused:
        branch.merge_into(repository.branch(loop.settings.lakefs.branch))
    message = refused.value.body["message"]
    assert refused.value.status_code == 412
    assert "webhook request failed (status code: 400)" in message
    assert "median_income" not in message  # lakeFS does not pass the answer on
    reason = lakefs_client.rejection_reason(loop.client, repository.id, message)
    assert reason.startswith(" ".join(message.split()))
    assert "data checks failed on data/direct/bad.parquet:\n- " in reason
    assert "median_income: expect_column_values_to_be_between" in reason


def test_a_file_name_lakefs_would_refuse_as_a_branch_id_still_lands(loop: Loop) -> None:
    table = loop.batch("donnees", market.generate_batch(rows=300, seed=21))
    published = loop.publish(table, "données d'été (v2)")
    assert published.merged, published.rejection
    assert published.ingest_branch.startswith("ingest-donnees-d-ete-v2-")


def test_lakefs_unable_to_run_the_checks_is_reported_and_nothing_is_lost(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lakeFS server started without the action's variable answers 500 (lakeFS >= 1.60): that is
    no verdict on the data. The error names the variable; main is untouched and the batch stays
    on its branch, unmarked as rejected, to merge once lakeFS is fixed."""
    loop.wait_idle()
    before = loop.main_head()
    monkeypatch.delenv("LAKEFSACTION_LAKELOOP_WEBHOOK_SECRET")
    table = loop.batch("unjudged", market.generate_batch(rows=300, seed=22))
    with pytest.raises(lakefs_client.HookConfigurationError) as refused:
        loop.publish(table, "unjudged")
    assert "lacks LAKEFSACTION_LAKELOOP_WEBHOOK_SECRET" in str(refused.value)
    assert loop.main_head() == before
    kept = re.search(r"on branch (ingest-unjudged-\S+)\.", str(refused.value))
    assert kept is not None
    branch = lakefs.Repository("housing", client=loop.client).branch(kept[1])
    assert "lakeloop.rejected" not in (branch.get_commit().metadata or {})
    assert any(info.path.endswith("unjudged.parquet") for info in branch.objects(prefix="data/"))


def test_actions_reach_a_protected_main_through_a_merge(loop: Loop) -> None:
    """With branch protection on main (lakeFS refuses direct writes and commits with 403),
    `lakeloop init` installs the action files through a branch and a merge, and they work."""
    settings = load_settings(
        state_dir=loop.settings.state_dir,
        lakefs={**loop.settings.lakefs.model_dump(), "repository": "protected"},
        gateway=loop.settings.gateway.model_dump(),
    )
    lakefs_client.ensure_repository(loop.client, settings)
    api = loop.client.sdk_client.repositories_api
    etag = api.get_branch_protection_rules_with_http_info("protected").headers["ETag"]
    api.set_branch_protection_rules(
        "protected", [BranchProtectionRule(pattern="main")], if_match=etag
    )
    main = lakefs.Repository("protected", client=loop.client).branch("main")
    with pytest.raises(lakefs.exceptions.ForbiddenException):
        main.commit(message="direct", allow_empty=True)

    installed = lakefs_client.install_actions(loop.client, settings)
    assert installed is not None
    assert main.get_commit().id == installed
    assert main.get_commit().parents[1:]  # a merge commit, not a direct one
    assert lakefs_client.install_actions(loop.client, settings) is None  # already in place
    loop.wait_idle()
    relayed = len(loop.prefect.events)
    bad = market.generate_batch(rows=300, seed=23)
    bad.loc[:99, "median_income"] = -1.0
    published = lakefs_client.publish(
        loop.client,
        settings,
        [loop.batch("protected-bad", bad)],
        name="b",
        source="t",
        dataset_version=1,
    )
    assert not published.merged
    assert "median_income" in published.rejection  # the installed checks ran on the merge
    loop.wait_idle()
    assert len(loop.prefect.events) == relayed  # installing the actions trained nothing
