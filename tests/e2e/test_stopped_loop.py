"""A re-sent batch cannot stop the loop, and a loop stopped around the hook says so and is repaired.

Every real part on loopback (lakeFS API server, gateway, Prefect server with its trigger, MLflow,
the API), driven through the `lakeloop` command as a user would:

1. a good file is ingested and served as v1;
2. the same file under another name is not merged again (`already on main as …`), and main stays
   trainable;
3. a batch that partly repeats main is refused with the count, then merged without the known rows
   (`--skip-existing`), and trains and is judged;
4. a repeat committed straight to main (around the pre-merge hook) fails its training naming both
   tables, and the stale champion shows in `/readyz`, the metrics and `lakeloop status`;
5. `lakeloop data remove` repairs main through the same hooks, and that commit trains.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import httpx
import lakefs
import pandas as pd
import pytest
import yaml

from lakeloop import lakefs_client, loop, registry
from lakeloop.dataset import load_spec
from lakeloop.settings import Settings
from tests.utils.workspace import Workspace, new_workspace, wait_settled
from tooling import market

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = new_workspace(tmp_path_factory.mktemp("stopped"))
    started = workspace.run("up")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    yield workspace
    workspace.run("down", timeout=120)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _head(settings: Settings) -> str:
    return lakefs_client.head_commit(lakefs_client.connect(settings), settings)


def _training_runs(settings: Settings) -> int:
    return len(loop.runs_of_flow(settings, "train"))


def _readyz(settings: Settings) -> dict[str, object]:
    answer: dict[str, object] = httpx.get(f"{settings.api_url}/readyz", timeout=5).json()
    return answer


GOOD_ROWS = market.generate_batch(rows=2000, seed=21)


@pytest.fixture(scope="module")
def first(workspace: Workspace) -> str:
    """1. The first batch, ingested from good.csv, trains and is served; its commit."""
    settings = workspace.settings
    GOOD_ROWS.to_csv(settings.state_dir.parent / "good.csv", index=False)
    merged = _ok(workspace.run("ingest", str(settings.state_dir.parent / "good.csv")))
    commit = _head(settings)
    assert commit[:12] in merged
    loop.wait_for_training(settings, commit_id=commit, timeout=300)
    assert loop.wait_until_served(settings, commit_id=commit, timeout=60)["version"] == "1"
    return commit


def test_a_resent_batch_cannot_stop_the_loop_and_a_stopped_loop_is_loud(
    workspace: Workspace, first: str
) -> None:
    settings = workspace.settings
    folder = settings.state_dir.parent
    good_rows = GOOD_ROWS
    good = folder / "good.csv"

    # 2. The same file re-sent under another name, as an export job's retry does: not merged.
    again = folder / "again.csv"
    shutil.copy(good, again)
    runs = _training_runs(settings)
    resent = _ok(workspace.run("ingest", str(again)))
    assert "already on main as data/" in resent
    assert "good.csv" in resent
    assert f"(commit {first[:12]})" in resent
    assert _head(settings) == first
    wait_settled(settings, flow="train")
    assert _training_runs(settings) == runs

    # 3. A batch that partly repeats main: refused with the count, nothing merged ...
    fresh_rows = market.generate_batch(rows=1500, seed=22)
    mixed = folder / "mixed.parquet"
    pd.concat([good_rows.head(300), fresh_rows], ignore_index=True).to_parquet(mixed, index=False)
    refused = workspace.run("ingest", str(mixed))
    assert refused.returncode == 1
    assert "300 of its 1800 rows are already on" in refused.stdout
    assert "--skip-existing" in refused.stdout
    assert _head(settings) == first
    # ... or merged without the known rows when asked; that commit trains and is judged.
    skipped = _ok(workspace.run("ingest", str(mixed), "--skip-existing"))
    assert "skipping 300 rows" in skipped
    second = _head(settings)
    assert second != first
    commit = lakefs.Repository(settings.lakefs.repository, client=lakefs_client.connect(settings))
    metadata = commit.ref(second).get_commit().metadata
    assert metadata is not None
    assert metadata["skipped_existing:mixed.parquet"] == "300"
    assert metadata["rows"] == "1500"
    loop.wait_for_training(settings, commit_id=second, timeout=300)
    assert _training_runs(settings) == runs + 1  # this merge's run; the re-sent file none
    mlflow = registry.connect(settings)
    [judged] = registry.versions_of_commit(mlflow, settings, commit_id=second)
    assert judged.tags[registry.TAG_GATE] in {"promoted", "rejected"}
    served = loop.served_model(settings)
    assert served is not None
    assert _readyz(settings)["training"] == "ok"

    # 4. A repeat committed straight to main, around the pre-merge hook: training fails naming
    # both tables, and the stale champion is shown where users look.
    main = commit.branch(settings.lakefs.branch)
    main.object("data/direct/repeat.csv").upload(data=good_rows.head(500).to_csv(index=False))
    broken = main.commit(message="a repeat around the checks").get_commit().id
    with pytest.raises(loop.LoopError, match="failed the checks") as failed:
        loop.wait_for_training(settings, commit_id=broken, timeout=300)
    assert "data/direct/repeat.csv" in str(failed.value)
    assert "good.csv" in str(failed.value)
    assert "across the history" in str(failed.value)
    loop.poll(
        lambda: str(_readyz(settings)["training"]).startswith("blocked"),
        what="/readyz to show that training is blocked",
        timeout=60,
    )
    ready = _readyz(settings)
    assert ready["status"] == "degraded"
    # The champion is the second batch's model if the gate promoted it, else the first's.
    promoted = judged.tags[registry.TAG_GATE] == "promoted"
    assert ready["champion_commits_behind"] == (1 if promoted else 2)
    assert "data/direct/repeat.csv" in str(ready["training"])
    metrics = httpx.get(f"{settings.api_url}/metrics", timeout=5).text
    assert "lakeloop_training_blocked 1.0" in metrics
    status = workspace.run("status")
    assert status.returncode == 1
    assert "blocked" in status.stdout
    assert "data/direct/repeat.csv" in status.stdout
    assert served == loop.served_model(settings)  # nothing new served

    # 5. The repair goes through the same hooks and its commit trains.
    repaired = _ok(workspace.run("data", "remove", "data/direct/repeat.csv"))
    assert "removed data/direct/repeat.csv" in repaired
    fixed = _head(settings)
    assert fixed[:12] in repaired
    loop.wait_for_training(settings, commit_id=fixed, timeout=300)
    assert "data/direct/repeat.csv" not in lakefs_client.table_paths(commit.ref(fixed), settings)
    loop.poll(
        lambda: _readyz(settings)["training"] == "ok",
        what="/readyz to show training unblocked",
        timeout=60,
    )
    assert _ok(workspace.run("status"))
    unknown = workspace.run("data", "remove", "data/no/such.csv")
    assert unknown.returncode == 2
    assert "not a table on" in unknown.stdout


def test_models_record_their_description_and_a_change_is_assessed_first(
    workspace: Workspace, first: str
) -> None:
    """Lineage names the description each model was trained under; `lakeloop dataset diff` says
    what a new description would do to main's tables before anything runs, and refuses a
    renamed target."""
    settings = workspace.settings
    spec = load_spec()
    shown = _ok(workspace.run("model", "show"))
    assert spec.label in shown
    assert spec.digest in shown
    served = loop.served_model(settings)
    assert served is not None
    assert served["dataset"] == spec.label
    assert served["dataset_digest"] == spec.digest

    folder = settings.state_dir.parent
    current = folder / "current.yaml"
    current.write_text(spec.to_yaml())
    raw = spec.model_dump(mode="json")
    raw["version"] = 2
    raw["features"] = [f for f in raw["features"] if f["name"] != "total_bedrooms"]
    raw["checks"] = [c for c in raw["checks"] if c.get("left") != "total_bedrooms"]
    dropped = folder / "dropped.yaml"
    dropped.write_text(yaml.safe_dump(raw))
    before = _head(settings)
    diff = _ok(workspace.run("dataset", "diff", str(current), str(dropped)))
    assert "dropped: total_bedrooms (dropped from older tables)" in diff
    assert "adapted" in diff
    assert "can train under california_housing@v2" in diff
    assert f"was trained under {spec.label}" in diff
    assert f"with the request schema of {spec.label}; it needs total_bedrooms" in diff
    assert "then the schema swaps with the model" in diff

    raw["target"]["name"] = "price"
    raw["checks"] = [c for c in raw["checks"] if c.get("column") != "median_house_value"]
    renamed = folder / "renamed.yaml"
    renamed.write_text(yaml.safe_dump(raw))
    refused = workspace.run("dataset", "diff", str(current), str(renamed))
    assert refused.returncode == 1
    assert "target renamed: median_house_value -> price" in refused.stdout
    assert "a target cannot be renamed" in refused.stdout
    assert _head(settings) == before  # assessing changes nothing on main
