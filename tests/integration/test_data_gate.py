"""One verdict for one state: the pre-merge hook's verdict on (main + a batch) equals the training
gate's verdict on the commit that merge produces, for the bad-data corpus and for batches that
repeat, overlap or partly duplicate what main holds (as CSV and Parquet, whose dtypes differ).

Both gates run for real over HTTP against the lakeFS-compatible server (real Great Expectations);
the training side uses a data gate of its own, with its own store of table checks, so agreement is
not an artefact of a shared cache."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lakefs
import pandas as pd
import pytest

from gateway.app import Verdict, check_merge
from lakeloop import datagate, lakefs_client, loop
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.settings import Settings
from tests.utils.bad_batches import BAD_BATCHES
from tests.utils.local_lakefs import local_repository, pre_merge_hook
from tooling import market

pytestmark = pytest.mark.integration

LAKEFS_SECRET = "data-gate-lakefs-secret-0123456789"
_counter = itertools.count()


@dataclass(frozen=True)
class Repo:
    settings: Settings
    client: lakefs.Client
    spec: DatasetSpec
    root: Path

    def repository(self) -> lakefs.Repository:
        return lakefs.Repository(self.settings.lakefs.repository, client=self.client)

    def commit_to(self, branch: str, tables: dict[str, pd.DataFrame | bytes]) -> str:
        """Upload ``tables`` (file name → frame, or raw bytes) to ``branch`` and commit them."""
        target = self.repository().branch(branch)
        folder = f"data/{next(_counter):04d}-{branch}"
        for name, table in tables.items():
            target.object(f"{folder}/{name}").upload(data=_encode(name, table), mode="wb")
        return str(target.commit(message=f"tables for {branch}").get_commit().id)

    def judge_case(
        self, tables: dict[str, pd.DataFrame | bytes]
    ) -> tuple[Verdict, datagate.StateVerdict]:
        """The pre-merge verdict on merging ``tables`` into main, and the training verdict on the
        commit holding main plus ``tables`` (what the merge would make)."""
        branch = f"case-{next(_counter)}"
        self.repository().branch(branch).create(source_reference="main")
        commit = self.commit_to(branch, tables)
        pre_merge = check_merge(
            self.client,
            self.gate("pre-merge"),
            pre_merge_hook(self.settings, target="main", source=branch),
        )
        stored = lakefs_client.read_tables(
            self.client, self.settings, repository=self.settings.lakefs.repository, ref=commit
        )
        training = self.gate(f"training-{branch}").judge_stored(stored)
        return pre_merge, training

    def gate(self, name: str) -> datagate.DataGate:
        from lakeloop.validation.checks import warm_validator  # noqa: PLC0415 - GX import

        return datagate.DataGate(
            self.spec,
            warm_validator,
            prefix=self.settings.lakefs.data_prefix,
            state_dir=self.root / name,
        )


def _encode(name: str, table: pd.DataFrame | bytes) -> bytes:
    if isinstance(table, bytes):
        return table
    buffer = io.BytesIO()
    if name.endswith(".csv"):
        buffer.write(table.to_csv(index=False).encode())
    else:
        table.to_parquet(buffer, index=False)
    return buffer.getvalue()


BASE = market.generate_batch(rows=1500, seed=1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    root = tmp_path_factory.mktemp("gate")
    with local_repository(root, secret=LAKEFS_SECRET) as (settings, client):
        found = Repo(settings=settings, client=client, spec=load_spec(), root=root)
        # main holds one good batch, committed directly (no hooks are installed here).
        found.commit_to("main", {"base.parquet": BASE})
        yield found


def _assert_agree(pre_merge: Verdict, training: datagate.StateVerdict) -> None:
    assert pre_merge.passed == training.passed, (pre_merge.detail, training.result.failures)
    assert sorted(pre_merge.failures) == sorted(training.result.failures)


@pytest.mark.parametrize("name", list(BAD_BATCHES))
def test_corpus_verdicts_agree(repo: Repo, name: str) -> None:
    build, expected = BAD_BATCHES[name]
    # CSV: some damage (text in a numeric column) cannot be written as Parquet.
    pre_merge, training = repo.judge_case(
        {"bad.csv": build(market.generate_batch(rows=2000, seed=42))}
    )
    _assert_agree(pre_merge, training)
    assert not pre_merge.passed
    assert any(expected in line for line in pre_merge.failures)


FRESH = market.generate_batch(rows=800, seed=3)
OVERLAP = {
    "fresh batch": ({"fresh.parquet": FRESH}, True),
    "the same batch re-sent under another name": ({"again.parquet": BASE}, False),
    "re-sent as CSV (int and float columns read differently)": ({"again.csv": BASE}, False),
    "half old, half new": (
        {"half.parquet": pd.concat([BASE.head(400), FRESH.head(400)], ignore_index=True)},
        False,
    ),
    "twenty old rows in a new batch": (
        {"partial.csv": pd.concat([FRESH, BASE.sample(20, random_state=4)], ignore_index=True)},
        False,
    ),
    "two new tables repeating each other": (
        {"one.parquet": FRESH, "two.csv": FRESH.head(100)},
        False,
    ),
    "old rows with one value changed are new rows": (
        {
            "changed.parquet": BASE.head(300).assign(
                median_income=BASE.head(300).median_income + 0.01
            )
        },
        True,
    ),
}


@pytest.mark.parametrize("name", list(OVERLAP))
def test_overlap_verdicts_agree(repo: Repo, name: str) -> None:
    tables, passes = OVERLAP[name]
    pre_merge, training = repo.judge_case(tables)
    _assert_agree(pre_merge, training)
    assert pre_merge.passed is passes, pre_merge.detail
    if not passes:
        assert any("across the history" in line for line in pre_merge.failures)


def test_a_repeat_names_both_tables_and_the_count(repo: Repo) -> None:
    pre_merge, training = repo.judge_case({"again.csv": BASE.head(250)})
    [line] = training.result.failures
    assert "again.csv" in line
    assert "base.parquet" in line
    assert "250 of its 250 rows repeat rows" in line
    assert training.result.failing_tables[0].endswith("again.csv")
    _assert_agree(pre_merge, training)


def test_a_removal_that_repairs_main_passes_both_gates(repo: Repo) -> None:
    """main broken around the hook (a repeated table committed directly): merging a branch that
    removes the repeat passes the pre-merge gate, and the resulting state trains."""
    repository = repo.repository()
    repository.branch("broken").create(source_reference="main")
    repo.commit_to("broken", {"repeat.parquet": BASE.head(100)})
    stored = lakefs_client.read_tables(
        repo.client, repo.settings, repository=repo.settings.lakefs.repository, ref="broken"
    )
    assert not repo.gate("broken").judge_stored(stored).passed
    repeat = next(path for path in stored if path.endswith("repeat.parquet"))
    repository.branch("repair").create(source_reference="broken")
    repair = repository.branch("repair")
    repair.object(repeat).delete()
    repair.commit(message="remove the repeat")
    verdict = check_merge(
        repo.client,
        repo.gate("pre-merge"),
        pre_merge_hook(repo.settings, target="broken", source="repair"),
    )
    assert verdict.passed, verdict.detail
    after = lakefs_client.read_tables(
        repo.client, repo.settings, repository=repo.settings.lakefs.repository, ref="repair"
    )
    assert repo.gate("after-repair").judge_stored(after).passed


def test_table_checks_are_kept_by_checksum_not_redone(repo: Repo) -> None:
    """A second verdict on the same history checks only the table it has not seen."""
    gate = repo.gate("kept")
    first = repo.judge_case({"fresh-a.parquet": market.generate_batch(rows=200, seed=11)})
    assert first[0].passed
    stored = lakefs_client.read_tables(
        repo.client, repo.settings, repository=repo.settings.lakefs.repository, ref="main"
    )
    assert gate.judge_stored(stored).checked == list(stored)
    assert gate.judge_stored(stored).checked == []


def test_the_gateway_judges_main_at_start_up(repo: Repo) -> None:
    """So the first pre-merge hook after a start (an upgrade, a new description) finds every
    table's check kept instead of reading the history inside lakeFS's hook timeout."""
    from gateway.app import WarmValidator, warm_up  # noqa: PLC0415

    gate = repo.gate("warm")
    on_main = lakefs_client.stored_tables(
        repo.repository().ref("main"), prefix=repo.settings.lakefs.data_prefix
    )
    warm_up(WarmValidator(repo.spec), gate, repo.client, repo.settings)
    kept = repo.root / "warm"
    loop.poll(
        lambda: len(list(kept.rglob("*.json"))) == len(on_main),
        what="a kept check of every table on main",
        timeout=60,
    )
    assert (
        gate.judge_merge(
            repo.client, repository=repo.settings.lakefs.repository, base="main", head="main"
        ).checked
        == []
    )
