"""Changing the dataset description does not stop the loop, and the API keeps serving the champion
under its own schema until a model trained under the new description replaces it.

Every real part on loopback (lakeFS API server, gateway, Prefect server with its trigger, MLflow,
the API), driven through the `lakeloop` command as a user would:

1. the stack is up with the shipped description; 2,000 rows are ingested and served as v1;
2. the description drops `total_bedrooms` (version 2) and the stack is restarted with it: `up` says
   what happens to the table on main; the API still serves v1 and asks for v1's features;
3. a batch without that column is merged, trains under version 2 (the older table judged by the
   description it was ingested with) and is promoted; the request schema and the OpenAPI document
   swap with the model;
4. a description that renames the target, or leaves no row that can train, is refused by `up`,
   which stops the stack again; nothing on main or in the registry changed.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lakeloop import lakefs_client, loop, registry
from lakeloop.dataset import DatasetSpec
from lakeloop.settings import Settings
from tests.utils.descriptions import V1, changed
from tests.utils.workspace import Workspace, new_workspace
from tooling import market

pytestmark = pytest.mark.e2e

V2 = changed(drop="total_bedrooms")


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _under(workspace: Workspace, spec: DatasetSpec) -> Workspace:
    """The same workspace with ``spec`` as the configured description (for the next `up`)."""
    path = workspace.settings.state_dir.parent / f"{spec.name}-v{spec.version}-{spec.digest}.yaml"
    path.write_text(spec.to_yaml())
    return dataclasses.replace(
        workspace,
        env=workspace.env | {"LAKELOOP_DATASET": str(path)},
        settings=workspace.settings.model_copy(update={"dataset": path}),
    )


def _restart(workspace: Workspace, spec: DatasetSpec) -> tuple[Workspace, str]:
    """Stop the stack and start it again under ``spec``; the new workspace and what `up` said."""
    _ok(workspace.run("down", timeout=120))
    restarted = _under(workspace, spec)
    return restarted, _ok(restarted.run("up"))


def _head(settings: Settings) -> str:
    return lakefs_client.head_commit(lakefs_client.connect(settings), settings)


def _versions(settings: Settings) -> list[str]:
    client = registry.connect(settings)
    found = client.search_model_versions(f"name='{settings.mlflow.model_name}'")
    return sorted(str(version.version) for version in found)


def _predict(settings: Settings, record: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{settings.api_url}/v1/predict", json=record, timeout=10)


def _documented(settings: Settings) -> set[str]:
    document = httpx.get(f"{settings.api_url}/schema/openapi.json", timeout=10).json()
    return set(document["components"]["schemas"]["HouseFeatures"]["properties"])


RECORD = market.generate_batch(rows=1, seed=40)[V1.feature_names].iloc[0].to_dict()
WITHOUT = {name: value for name, value in RECORD.items() if name != "total_bedrooms"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Workspace]]:
    """The workspaces the stack was started with, latest last (`down` needs no description)."""
    started = [new_workspace(tmp_path_factory.mktemp("described"))]
    _ok(started[0].run("up"))
    yield started
    started[-1].run("down", timeout=120)


def test_a_description_change_trains_on_and_the_schema_swaps_with_the_model(
    stack: list[Workspace],
) -> None:
    first = stack[0]
    folder = first.settings.state_dir.parent

    # 1. History under version 1, served as v1.
    old_rows = market.generate_batch(rows=2000, seed=41)
    old_rows.to_csv(folder / "old.csv", index=False)
    _ok(first.run("ingest", str(folder / "old.csv")))
    commit = _head(first.settings)
    loop.wait_for_training(first.settings, commit_id=commit, timeout=300)
    assert loop.wait_until_served(first.settings, commit_id=commit, timeout=60)["version"] == "1"

    # 2. The description drops a column; `up` says what becomes of main's table first.
    second, said = _restart(first, V2)
    stack.append(second)
    settings = second.settings
    assert "old.csv" in said
    assert V1.label in said  # the table was ingested under version 1 ...
    assert "2000 of 2000 rows can train under california_housing@v2" in said  # ... and still can
    served = loop.poll(
        lambda: loop.served_model(settings), what="the API to serve v1 again", timeout=60
    )
    assert (served["version"], served["dataset"]) == ("1", V1.label)
    # v1 keeps its request schema although the API was started under version 2.
    assert _predict(settings, RECORD).json()["model"]["version"] == "1"
    refused = _predict(settings, WITHOUT)
    assert refused.status_code == 422
    assert [error["field"] for error in refused.json()["errors"]] == ["total_bedrooms"]
    assert "total_bedrooms" in _documented(settings)

    # 3. New data without the column: merged, trained under version 2, promoted.
    new_rows = market.generate_batch(rows=2000, seed=42).drop(columns="total_bedrooms")
    new_rows.to_csv(folder / "new.csv", index=False)
    _ok(second.run("ingest", str(folder / "new.csv")))
    commit = _head(settings)
    loop.wait_for_training(settings, commit_id=commit, timeout=300)
    [judged] = registry.versions_of_commit(registry.connect(settings), settings, commit_id=commit)
    assert judged.tags[registry.TAG_DATASET] == V2.label
    assert judged.tags[registry.TAG_GATE] == "promoted", judged.tags[registry.TAG_GATE_REASONS]
    served = loop.wait_until_served(settings, commit_id=commit, timeout=60)
    assert (served["version"], served["dataset"]) == ("2", V2.label)
    # The schema swapped with the model.
    assert _predict(settings, WITHOUT).json()["model"]["version"] == "2"
    stale = _predict(settings, RECORD)
    assert stale.status_code == 422
    assert stale.json()["errors"][0]["field"] == "total_bedrooms"
    assert _documented(settings) == set(V2.feature_names)
    shown = _ok(second.run("model", "show"))
    assert V2.label in shown
    assert V2.digest in shown


REFUSED = [
    (changed(target="price"), "a target cannot be renamed"),
    (
        changed(add={"name": "year_built", "type": "numeric", "min": 1800, "max": 2100}),
        "no row on main can train under california_housing@v2",
    ),
]


def test_up_refuses_a_description_that_cannot_work_and_changes_nothing(
    stack: list[Workspace],
) -> None:
    current = stack[-1]
    folder = current.settings.state_dir.parent
    if not _versions(current.settings):  # run on its own: put some history on main first
        market.generate_batch(rows=500, seed=43).to_csv(folder / "some.csv", index=False)
        _ok(current.run("ingest", str(folder / "some.csv")))
        loop.wait_for_training(current.settings, commit_id=_head(current.settings), timeout=300)
    head, versions = _head(current.settings), _versions(current.settings)
    _ok(current.run("down", timeout=120))

    for description, refusal in REFUSED:
        refused = _under(current, description).run("up")
        assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
        assert refusal in refused.stdout
        assert "stack stopped; nothing on main or in the registry changed" in refused.stdout
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{current.settings.api_url}/healthz", timeout=2)

    _ok(current.run("up"))  # back under the description that works
    assert _head(current.settings) == head
    assert _versions(current.settings) == versions
