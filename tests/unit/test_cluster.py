"""The pieces a Dask training is made of, without a cluster: a split made one partition at a time
from one plan is the split of the whole frame, and the lakeFS secret sent to the workers never
shows in a repr (what Dask's logs and dashboard print of a task's arguments)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import SecretStr

from lakeloop import cluster, model, rowkeys
from lakeloop.dataset import DatasetSpec
from lakeloop.draft import draft
from lakeloop.ingest import read_source
from lakeloop.settings import TrainingSettings
from tests.utils.real_data import AMES_CSV, shipped
from tooling import market

TRAINING = TrainingSettings()


def split_by_partitions(
    frame: pd.DataFrame, spec: DatasetSpec, feedback: np.ndarray, parts: int
) -> dict[str, set[int]]:
    """The row keys of each part, the frame split as a cluster splits it: keys per partition,
    one plan from all of them, then each partition placed alone."""
    chunks = np.array_split(np.arange(len(frame)), parts)
    pieces = [model.with_target(frame.iloc[rows], spec, feedback[rows]) for rows in chunks]
    keys = [model.plan_keys(rows, spec, marked) for rows, marked in pieces]
    found = [key for key in keys if key is not None]
    plan = model.split_plan(pd.concat(found) if found else None, spec, TRAINING)
    parts_found: dict[str, set[int]] = {
        "fit": set(),
        "stop": set(),
        "holdout": set(),
        "held": set(),
    }
    for rows, marked in pieces:
        placed = model.place_rows(rows, spec, TRAINING, plan, marked)
        row_keys = rowkeys.keys(rows, spec)
        for name in ("fit", "stop", "holdout"):
            parts_found[name] |= set(row_keys[getattr(placed, name)].tolist())
        if placed.held is not None:
            parts_found["held"] |= set(row_keys[placed.held].tolist())
    return parts_found


def split_whole(
    frame: pd.DataFrame, spec: DatasetSpec, feedback: np.ndarray
) -> dict[str, set[int]]:
    split = model.split_rows(frame, spec, TRAINING, feedback=feedback)
    held = split.clean_holdout if split.clean_holdout is not None else split.holdout.iloc[:0]
    return {
        name: set(rowkeys.keys(rows, spec).tolist())
        for name, rows in (
            ("fit", split.fit),
            ("stop", split.stop),
            ("holdout", split.holdout),
            ("held", held),
        )
    }


@pytest.fixture(scope="module")
def ames() -> tuple[pd.DataFrame, DatasetSpec]:
    sales = read_source(shipped(AMES_CSV))
    spec = draft(sales, target="SalePrice", name="ames").spec
    return rowkeys.keyed(sales, spec), spec


@pytest.mark.parametrize("parts", [1, 3, 7])
@pytest.mark.parametrize("with_feedback", [False, True], ids=["plain", "feedback"])
@pytest.mark.parametrize("dataset", ["market (hash)", "ames (time)", "ames (time, grouped)"])
def test_a_split_made_per_partition_is_the_split_of_the_whole(
    dataset: str,
    with_feedback: bool,
    parts: int,
    spec: DatasetSpec,
    ames: tuple[pd.DataFrame, DatasetSpec],
) -> None:
    if dataset.startswith("market"):
        frame, described = rowkeys.keyed(market.generate_batch(rows=3000, seed=5), spec), spec
    else:
        frame, described = ames
        if "grouped" in dataset:
            described = DatasetSpec.model_validate(described.model_dump() | {"group": "PID"})
    assert (described.event_time is None) == dataset.startswith("market")
    marks = np.random.default_rng(3).random(len(frame)) < (0.2 if with_feedback else 0.0)
    whole = split_whole(frame, described, marks)
    assert split_by_partitions(frame, described, marks, parts) == whole
    assert whole["holdout"]  # a split that places nothing would pass too


def test_the_secret_sent_to_workers_never_shows_and_still_arrives(tmp_path: Path) -> None:
    secret = "s3cr3t-value-0123456789"
    access = cluster.LakeFSAccess("http://lakefs:8000", "AKIA", SecretStr(secret))
    source = cluster.Source(access, "repo", "c" * 64)
    assert secret not in repr(source)
    assert secret not in str(source)
    # As Dask sends a task's arguments (bytes made here, not untrusted).
    arrived = pickle.loads(pickle.dumps(source))  # noqa: S301
    assert arrived.access.secret.get_secret_value() == secret
