"""Changing the dataset description does not stop the loop: history ingested under the old
description stays judged by it, and the training set is built under the new one by the stated
rules (lakeloop.evolution), for a dropped, an added nullable and an added required feature.

Real parts: the lakeFS-compatible server over HTTP with the official SDK, write-audit-publish
storing each batch's description, real Great Expectations."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lakefs
import numpy as np
import pandas as pd
import pytest

from gateway.app import check_merge
from lakeloop import datagate, evolution, lakefs_client, rowkeys
from lakeloop.dataset import DatasetSpec
from lakeloop.ingest import inspect_source, write_parquet
from lakeloop.settings import Settings
from lakeloop.validation.checks import warm_validator
from tests.utils.descriptions import V1, changed
from tests.utils.local_lakefs import local_repository, pre_merge_hook
from tooling import market

pytestmark = pytest.mark.integration

LAKEFS_SECRET = "description-change-secret-0123456789"
_names = itertools.count()

DROPPED = changed(drop="total_bedrooms")
ADDED_NULLABLE = changed(add={"name": "year_built", "type": "numeric", "nullable": True})
ADDED_REQUIRED = changed(add={"name": "year_built", "type": "numeric", "min": 1800, "max": 2100})


def under(spec: DatasetSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """A batch written under ``spec``: its columns, new ones filled with plausible values."""
    shaped = frame.copy()
    if "year_built" in spec.columns:
        shaped["year_built"] = np.arange(len(shaped)) % 100 + 1920
    return shaped[spec.columns]


@dataclass(frozen=True)
class Repo:
    settings: Settings
    client: lakefs.Client
    root: Path

    def publish(self, frame: pd.DataFrame, spec: DatasetSpec) -> str:
        name = f"batch-{next(_names)}"
        table = inspect_source(write_parquet(frame, self.root / f"{name}.parquet"))
        published = lakefs_client.publish(
            self.client,
            self.settings,
            [table],
            name=name,
            source="test",
            dataset_version=spec.version,
            description=spec.to_yaml(),
        )
        assert published.commit_id is not None
        return published.commit_id

    def gate(self, current: DatasetSpec, name: str) -> datagate.DataGate:
        return datagate.DataGate(
            current,
            warm_validator,
            prefix=self.settings.lakefs.data_prefix,
            state_dir=self.root / name,
        )


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    with local_repository(tmp_path, secret=LAKEFS_SECRET) as (settings, client):
        found = Repo(settings=settings, client=client, root=tmp_path)
        # History on main under version 1: two batches.
        found.publish(market.generate_batch(rows=600, seed=1), V1)
        found.publish(market.generate_batch(rows=400, seed=2), V1)
        yield found


def _verdicts(repo: Repo, current: DatasetSpec, batch: pd.DataFrame) -> dict[str, Any]:
    """Pre-merge verdict on a batch under ``current``, then (after it merged) the training
    verdict and the training frame of main, both under ``current``."""
    repository = lakefs.Repository(repo.settings.lakefs.repository, client=repo.client)
    branch = repository.branch(f"incoming-{next(_names)}").create(source_reference="main")
    folder = "data/9999-incoming"
    branch.object(f"{folder}/batch.parquet").upload(data=batch.to_parquet(index=False), mode="wb")
    branch.object(f"{folder}/{evolution.DESCRIPTION_FILE}").upload(data=current.to_yaml(), mode="w")
    branch.commit(message="a batch under the new description")
    hook = pre_merge_hook(repo.settings, target="main", source=branch.id)
    pre_merge = check_merge(repo.client, repo.gate(current, "pre-merge"), hook)
    merged = branch.merge_into(repository.branch("main"))
    gate = repo.gate(current, "training")
    tables = lakefs_client.read_tables(
        repo.client, repo.settings, repository=repo.settings.lakefs.repository, ref=merged
    )
    ingested = gate.ingested_under(repository.ref(merged))
    training = gate.judge_stored(tables, ingested)
    data = gate.training_frame(tables, ingested)
    return {
        "pre_merge": pre_merge,
        "training": training,
        "frame": data.frame,
        "left_out": data.left_out,
    }


def _both_pass(found: dict[str, Any]) -> pd.DataFrame:
    """Both gates pass the batch under the new description; the training frame."""
    assert found["pre_merge"].passed, found["pre_merge"].detail
    assert found["training"].passed, found["training"].result.failures
    frame: pd.DataFrame = found["frame"]
    return frame


def test_a_dropped_feature_is_dropped_from_the_history(repo: Repo) -> None:
    batch = under(DROPPED, market.generate_batch(rows=300, seed=3))
    found = _verdicts(repo, DROPPED, batch)
    frame = _both_pass(found)
    assert list(frame.columns) == DROPPED.columns
    assert len(frame) == 1300
    assert found["left_out"] == {}
    # Each row keeps the key it was ingested with, so older rows keep their side of the split.
    assert frame.index.name == rowkeys.ROW_KEY
    old_rows = lakefs_client.read_tables(
        repo.client, repo.settings, repository=repo.settings.lakefs.repository, ref="main~1"
    )
    for table in old_rows.values():
        assert set(rowkeys.content_hashes(table.load(), V1)) <= set(frame.index)
    # Judged by today's description alone, the old tables would be refused for the column.
    today_only = repo.gate(DROPPED, "today-only").judge_stored(
        lakefs_client.read_tables(
            repo.client, repo.settings, repository=repo.settings.lakefs.repository, ref="main"
        )
    )
    assert not today_only.passed
    assert any("unexpected total_bedrooms" in line for line in today_only.result.failures)


def test_an_added_nullable_feature_is_missing_in_the_history(repo: Repo) -> None:
    batch = under(ADDED_NULLABLE, market.generate_batch(rows=300, seed=4))
    found = _verdicts(repo, ADDED_NULLABLE, batch)
    frame = _both_pass(found)
    assert list(frame.columns) == ADDED_NULLABLE.columns
    assert len(frame) == 1300
    assert frame["year_built"].isna().sum() == 1000
    assert frame["year_built"].notna().sum() == 300


def test_an_added_required_feature_leaves_the_history_out_and_says_so(repo: Repo) -> None:
    batch = under(ADDED_REQUIRED, market.generate_batch(rows=300, seed=5))
    found = _verdicts(repo, ADDED_REQUIRED, batch)
    frame = _both_pass(found)
    assert len(frame) == 300
    assert frame["year_built"].notna().all()
    assert len(found["left_out"]) == 2
    assert all("year_built" in why for why in found["left_out"].values())
    # The report says which tables were left out, as warnings.
    warnings = found["training"].result.warnings
    assert sum("expect_table_to_train_under_the_description" in w for w in warnings) == 2


def test_a_repeat_across_descriptions_is_still_caught(repo: Repo) -> None:
    """Rows sent again under the new description (the dropped column gone) repeat the history."""
    again = under(DROPPED, market.generate_batch(rows=600, seed=1))
    found = _verdicts(repo, DROPPED, again)
    assert not found["pre_merge"].passed
    assert any("across the history" in line for line in found["pre_merge"].failures)
    assert sorted(found["pre_merge"].failures) == sorted(found["training"].result.failures)


def test_the_changes_are_named() -> None:
    assert evolution.compare(V1, DROPPED).lines() == [
        "dropped: total_bedrooms (dropped from older tables)"
    ]
    assert evolution.compare(V1, ADDED_REQUIRED).excludes_older_tables
    assert not evolution.compare(V1, ADDED_NULLABLE).excludes_older_tables
    renamed = evolution.compare(V1, changed(target="price"))
    assert renamed.target_renamed
    assert renamed.lines()[0].startswith("target renamed: median_house_value -> price")


def test_what_up_and_dataset_diff_refuse(repo: Repo) -> None:
    """A renamed target, or a change that leaves no row to train on, is refused with what would
    break; a change history survives is not; assessing writes nothing to main."""
    repository = lakefs.Repository(repo.settings.lakefs.repository, client=repo.client)
    before = repository.branch("main").get_commit().id

    def assessed(spec: DatasetSpec) -> datagate.Impact:
        return datagate.impact(
            repo.gate(spec, f"assess-{next(_names)}"),
            repo.client,
            repository=repo.settings.lakefs.repository,
            ref="main",
        )

    kept = assessed(DROPPED)
    assert kept.refusals == []
    assert kept.trainable_rows == kept.rows == 1000
    assert all(fate.fate.startswith("adapted: dropped: total_bedrooms") for fate in kept.tables)
    assert {fate.ingested for fate in kept.tables} == {V1.label}

    none_left = assessed(ADDED_REQUIRED)
    assert none_left.trainable_rows == 0
    assert none_left.refusals == [
        "no row on main can train under california_housing@v2 (1000 rows, every table left out)"
    ]

    renamed = assessed(changed(target="price"))
    assert any("a target cannot be renamed" in refusal for refusal in renamed.refusals)
    assert repository.branch("main").get_commit().id == before
