"""Your own table on the first try: the raw Ames house-sales file, as published (82 columns, ids,
sale year and month, integer-coded classes, gaps, names with spaces), through the `lakeloop`
command as a new user would run it, every real part on loopback.

1. `lakeloop dataset init` drafts a description from the earlier sales (2006-2008); nothing is
   edited by hand: no threshold, no column dropped or renamed;
2. `lakeloop up` with it, `lakeloop ingest` of the earlier sales: the first model is served
   (the gate needs no hand-set bar);
3. the later sales (2009-2010) are ingested: a new version trains on both, is judged on the newest
   period against the champion, and `ingest` prints the decision with its reasons;
4. the API answers a request written with the table's own column names and codes, and
   `lakeloop model list` shows both versions.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from lakeloop import lakefs_client, loop, registry
from lakeloop.dataset import DatasetSpec, codes_as_text, integer_codes_as_text, load_spec
from lakeloop.ingest import read_source
from lakeloop.stores.prediction_log import read_feedback_log, read_prediction_log
from tests.utils.real_data import AMES_CSV, shipped
from tests.utils.workspace import Workspace, new_workspace

pytestmark = pytest.mark.e2e


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    shipped(AMES_CSV)  # fails, naming the path, where the shared data is absent
    root = tmp_path_factory.mktemp("own")
    folder = root / "exports"
    folder.mkdir()
    sales = read_source(AMES_CSV)
    # Two exports as a team would receive them: the raw file's own lines, split by sale year.
    lines = AMES_CSV.read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    early = sales["Yr Sold"].to_numpy() <= 2008
    (folder / "sales-2006-2008.csv").write_text(
        header + "".join(line for line, keep in zip(rows, early, strict=True) if keep)
    )
    (folder / "sales-2009-2010.csv").write_text(
        header + "".join(line for line, keep in zip(rows, early, strict=True) if not keep)
    )
    shutil.copy(AMES_CSV, folder / "all.csv")
    workspace = new_workspace(root, LAKELOOP_DATASET=str(folder / "ames.yaml"))
    drafted = workspace.run(
        "dataset",
        "init",
        str(folder / "sales-2006-2008.csv"),
        "--target",
        "SalePrice",
        "--output",
        str(folder / "ames.yaml"),
        "--name",
        "ames",
    )
    _ok(drafted)
    _ok(workspace.run("up"))
    yield workspace
    workspace.run("down", timeout=120)


def _record(spec: DatasetSpec, row: dict[str, Any]) -> dict[str, Any]:
    """One row of the table as a JSON request: its features by their own names."""
    record = {}
    for feature in spec.features:
        value = row[feature.name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            record[feature.name] = None
        elif feature.type == "numeric":
            record[feature.name] = float(value)
        elif feature.codes == "integer":
            record[feature.name] = int(value)
        else:
            record[feature.name] = str(value)
    return record


def test_a_raw_public_table_reaches_a_served_model_and_newer_sales_can_win(
    workspace: Workspace,
) -> None:
    settings = workspace.settings
    folder = Path(workspace.env["LAKELOOP_DATASET"]).parent
    spec = load_spec(folder / "ames.yaml")
    assert spec.ids == ("Order", "PID")
    assert spec.event_time is not None
    assert spec.target.thresholds.max_mae is None  # nothing set by hand

    first = _ok(workspace.run("ingest", str(folder / "sales-2006-2008.csv")))
    assert f"{settings.mlflow.model_name} v1: promoted" in first
    served = loop.served_model(settings)
    assert served is not None
    assert (served["version"], served["dataset"]) == ("1", spec.label)

    second = _ok(workspace.run("ingest", str(folder / "sales-2009-2010.csv")))
    # Trained on both exports, judged on the newest sales against v1 (which never saw them):
    # the newer data wins (deterministic: seeded training, content-keyed rows).
    assert f"{settings.mlflow.model_name} v2: promoted" in second
    client = registry.connect(settings)
    run = client.get_run(client.get_model_version(settings.mlflow.model_name, "2").run_id)
    assert run.data.params["train_rows"] != run.data.params["holdout_rows"]
    assert int(run.data.params["train_rows"]) + int(run.data.params["holdout_rows"]) == len(
        read_source(folder / "all.csv")
    )
    assert "champion_mae" in run.data.metrics  # judged against v1 on the same, newest rows

    row = read_source(folder / "sales-2009-2010.csv").iloc[-1].to_dict()
    answer = httpx.post(f"{settings.api_url}/v1/predict", json=_record(spec, row), timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["prediction"] > 0
    listed = _ok(workspace.run("model", "list"))
    assert "promoted" in listed
    assert spec.label in listed


def test_a_version_judged_again_and_a_commit_trained_again_are_recorded(
    workspace: Workspace,
) -> None:
    """After the thresholds or the settings change, a person asks again: `lakeloop model promote
    VERSION` has the gate judge an older version against the champion on the newest data, and
    `lakeloop train --again` trains the newest commit once more as a new version."""
    settings = workspace.settings
    name = settings.mlflow.model_name
    client = registry.connect(settings)
    before = registry.champion(client, settings)
    assert before is not None
    assert before.version == "2"  # from the test above

    older = workspace.run("model", "promote", "1")
    # v1 never saw the 2009-2010 sales it is judged on; the champion v2 learned from their past.
    assert older.returncode == 1, older.stdout + older.stderr
    assert "not promoted" in older.stdout
    assert "worse than champion v2" in older.stdout
    assert registry.champion(client, settings).version == "2"
    asked = client.get_model_version(name, "1").tags[registry.TAG_REQUEST]
    assert "worse than champion v2" in asked

    retrained = _ok(workspace.run("train", "--again"))
    assert f"{name} v3:" in retrained
    third = client.get_model_version(name, "3")
    assert third.tags[registry.TAG_AGAIN] == "true"
    assert third.tags[registry.TAG_COMMIT] == before.tags[registry.TAG_COMMIT]
    assert third.tags[registry.TAG_GATE] in {"promoted", "rejected"}
    skipped = _ok(workspace.run("train"))
    assert "is already trained" in skipped
    assert "--again" in skipped

    champion = registry.champion(client, settings)
    assert champion is not None
    other = "2" if champion.version == "3" else "3"
    # v2 and v3: the same commit, the same seeded training, so the same model: it passes.
    passed = _ok(workspace.run("model", "promote", other))
    assert f"champion is v{other}" in passed
    promoted = registry.champion(client, settings)
    assert promoted.version == other
    assert promoted.tags[registry.TAG_GATE] == registry.PROMOTED_ON_REQUEST
    folder = Path(workspace.env["LAKELOOP_DATASET"]).parent
    spec = load_spec(folder / "ames.yaml")
    row = read_source(folder / "sales-2009-2010.csv").iloc[0].to_dict()
    loop.verify_served(settings, version=other, records=[_record(spec, row)], timeout=60)


def test_prices_reported_by_the_clients_own_ids_become_training_data(
    workspace: Workspace,
) -> None:
    """A client sends its parcel ids with the requests and later reports sale prices by them;
    the drift retrain folds them into lakeFS as a table of the dataset (ids, sale month, every
    column), which passes the real pre-merge checks and trains the next version."""
    settings = workspace.settings
    folder = Path(workspace.env["LAKELOOP_DATASET"]).parent
    spec = load_spec(folder / "ames.yaml")
    champion = loop.served_model(settings)
    assert champion is not None
    sales = read_source(folder / "sales-2009-2010.csv")
    # Sales whose categories the description lists: a batch of 40 with one rare category in it
    # (2.5 %) would be refused by the `mostly: 0.99` checks, as any batch would.
    known = pd.Series(True, index=sales.index)
    for feature in spec.features:
        if feature.type == "categorical":
            as_text = integer_codes_as_text if feature.codes == "integer" else codes_as_text
            written = as_text(sales[feature.name]).astype("string")
            known &= written.isna() | written.isin(feature.categories)
    sales = sales[known].tail(40)
    # New parcels (ids main does not hold), the features of real sales, the sale time not sent.
    records = [
        _record(spec, row) | {"PID": 9_000_000_000 + index}
        for index, row in enumerate(sales.to_dict("records"))
    ]
    start = datetime.now(UTC)
    answer = httpx.post(
        f"{settings.api_url}/v1/predict/batch", json={"records": records}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["ids"] == [{"PID": record["PID"]} for record in records]
    for record, price in zip(records, sales["SalePrice"], strict=True):
        reported = httpx.post(
            f"{settings.api_url}/v1/feedback",
            json={"ids": {"PID": record["PID"]}, "actual": float(price)},
            headers=loop.feedback_headers(settings),
            timeout=10,
        )
        assert reported.status_code == 202, reported.text
    end = datetime.now(UTC)

    def logged() -> bool:  # both logs reach their Parquet segments
        priced = read_feedback_log(settings.object_store, since=start)
        predicted = read_prediction_log(settings.object_store, since=start)
        return len(priced) == len(predicted) == len(records)

    loop.poll(logged, what="the prediction and feedback logs", timeout=60)
    before = set(_tables(settings))

    loop.run_deployment(
        settings,
        f"{loop.RETRAIN_FLOW}/retrain-on-drift",
        parameters={
            "champion_version": champion["version"],
            "window_id": "own-ids",
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
        },
        timeout=600,
    )
    [folded] = set(_tables(settings)) - before
    assert "feedback-" in folded
    client = registry.connect(settings)
    newest = registry.version_rows(client, settings, limit=1)[0]
    assert newest.trigger == "drift"
    assert newest.decision in {"promoted", "rejected"}
    run = client.get_run(
        client.get_model_version(settings.mlflow.model_name, newest.version).run_id
    )
    # Every row is trained on, in the holdout, or set aside: the most recent sales that predate
    # the feedback, held out of training to judge the new model on data it cannot have shaped.
    params = run.data.params
    used = sum(int(params[name]) for name in ("train_rows", "holdout_rows", "set_aside_rows"))
    assert used == len(read_source(folder / "all.csv")) + len(records)
    assert int(params["clean_holdout_rows"]) > 0


def _tables(settings: Any) -> list[str]:
    main = lakefs_client.main_reference(lakefs_client.connect(settings), settings)
    return lakefs_client.table_paths(main, settings)
