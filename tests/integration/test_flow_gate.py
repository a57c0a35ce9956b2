"""The training flow's own data gate (its validate step, without Prefect) on the bad-data corpus:
the right check named and a report a person can open, so nothing is trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lakeloop.dataset import DatasetSpec
from lakeloop.lakefs_client import StoredTable
from lakeloop.settings import Settings
from pipelines.train import validate, write_validation_report
from tests.utils.bad_batches import BAD_BATCHES, Builder
from tooling import market

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("name", "case"), BAD_BATCHES.items(), ids=list(BAD_BATCHES))
def test_each_bad_batch_is_refused_at_the_flow_gate_with_a_report(
    settings: Settings, spec: DatasetSpec, name: str, case: tuple[Builder, str]
) -> None:
    build, expected = case
    frame = build(market.generate_batch(rows=2000, seed=42))
    path = f"data/{name.replace(' ', '-')}/batch.parquet"
    tables = {path: StoredTable(checksum=f"checksum-{name}", frame=frame)}
    result = validate(settings, tables, spec).result
    report = write_validation_report(settings, spec, f"commit-{name.replace(' ', '-')}", result)
    assert not result.success
    assert any(expected in line for line in result.failures)
    assert result.failing_tables == [path]
    stored = json.loads((report / "validation.json").read_text())
    assert stored["success"] is False
    assert Path(report / "data_docs" / "index.html").exists()
