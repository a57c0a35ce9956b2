"""The drift → retrain loop on loopback with every real part, through the real Prefect trigger:
the demo's stable traffic retrains nothing and its shifted traffic exactly once; more shift inside
the cooldown retrains nothing; reported prices that make the error jump retrain, and when those
prices are wrong the retrained model is worse and is not promoted; prices poisoned by a factor
are held back before they train anything."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from lakeloop import lakefs_client, loop, registry
from lakeloop.dataset import load_spec
from monitoring.history import HistoryEntry
from monitoring.store import read_history
from tests.utils.workspace import Workspace, new_workspace, wait_settled
from tooling import market

pytestmark = pytest.mark.e2e

# Long enough to cover the demo's retrain and the next test's monitor run on a busy machine,
# short enough for the last test to wait it out.
COOLDOWN_SECONDS = 180
TRAFFIC_ROWS = 1000


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = new_workspace(
        tmp_path_factory.mktemp("drift"),
        LAKELOOP_MONITORING__POLICY__COOLDOWN=f"PT{COOLDOWN_SECONDS}S",
    )
    yield workspace
    workspace.run("down", timeout=120)


@pytest.fixture(scope="module")
def demo(workspace: Workspace) -> subprocess.CompletedProcess[str]:
    return workspace.run("demo", "--rows", "4000", "--keep")


def _history(workspace: Workspace) -> list[HistoryEntry]:
    return read_history(workspace.settings.monitoring_store)


def _retrains(workspace: Workspace) -> list[loop.FlowRun]:
    return loop.runs_of_flow(workspace.settings, "retrain")


def _send(workspace: Workspace, scenario: market.Scenario, *, seed: int, prices: str) -> str:
    """Send a batch of sales to the API and report prices for it (``true``, ``shuffled``,
    ``inflated`` or ``none``); returns the version that answered, once the logs hold it all."""
    settings = workspace.settings
    target = load_spec(settings.dataset).target.name
    sales = market.generate_batch(rows=TRAFFIC_ROWS, seed=seed, scenario=scenario)
    records = loop.json_records(sales.drop(columns=[target]))
    sent = datetime.now(UTC)
    _, ids, version = loop.send_traffic(settings, records)
    actual = sales[target].to_numpy()
    if prices == "shuffled":  # a broken price feed: real prices, each on the wrong sale
        actual = np.random.default_rng(seed).permutation(actual)
    if prices == "inflated":  # a poisoned feed: every price times 1.5, all within the bounds
        actual = actual * 1.5
        assert actual.max() <= (load_spec(settings.dataset).target.max or np.inf)
    if prices != "none":
        loop.report_prices(settings, ids, actual.tolist())
    loop.wait_for_logged(
        settings,
        model_version=version,
        since=sent,
        rows=len(ids),
        feedback_rows=0 if prices == "none" else len(ids),
    )
    return version


def test_demo_retrains_once_on_shift_and_serves_the_new_champion(
    demo: subprocess.CompletedProcess[str], workspace: Workspace
) -> None:
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-3000:]
    assert "stable market:" in demo.stdout
    assert "new champion v2 served" in demo.stdout

    stable, shifted = _history(workspace)
    assert not stable.decision.retrain, stable.decision.reason
    assert shifted.decision.retrain, shifted.decision.reason
    assert shifted.event_id is not None
    [retrain] = _retrains(workspace)
    assert retrain.state == "COMPLETED"
    assert retrain.parameters["window_id"] == shifted.window.id

    # The new champion was trained on the reported prices, folded into lakeFS, with drift as
    # its recorded trigger; the commit that holds them names the window.
    settings = workspace.settings
    client = registry.connect(settings)
    champion = registry.champion(client, settings)
    assert champion is not None
    assert champion.version == "2"
    assert champion.tags[registry.TAG_TRIGGER] == "drift"
    commit_id = champion.tags[registry.TAG_COMMIT]
    lakefs = lakefs_client.connect(settings)
    [commit] = lakefs_client.commit_log(lakefs, settings, ref=commit_id, limit=1)
    assert commit.metadata["lakeloop.window"] == shifted.window.id
    # ... and who reported them: the demo's own client, every price of the window.
    assert shifted.quality is not None
    assert commit.metadata["lakeloop.feedback.clients"] == f"local={shifted.quality.rows}"
    data = lakefs_client.read_table(
        lakefs, settings, repository=settings.lakefs.repository, ref=commit_id
    )
    assert len(data) == 4000 + shifted.quality.rows
    # The report a person opens is on disk.
    assert shifted.report_path
    assert Path(shifted.report_path).read_text().lstrip().lower().startswith("<!doctype html")
    shown = workspace.run("report")
    assert shown.returncode == 0
    assert "RETRAIN" in shown.stdout
    assert f"window={shifted.window.id}" in shown.stdout
    assert "folded in" in shown.stdout
    # Each monitor run is an MLflow run with the numbers and Evidently's report, and a Prefect
    # artifact a person finds in the UI.
    experiment = client.get_experiment_by_name(f"{settings.mlflow.experiment}-monitoring")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [run.data.tags["decision"] for run in runs] == ["none", "retrain"]
    assert runs[1].data.metrics["drift_share"] == pytest.approx(shifted.drift.drift_share)
    [report] = client.list_artifacts(runs[1].info.run_id, "evidently")
    assert report.path.endswith(".html")
    artifacts = httpx.post(
        f"{settings.prefect_api_url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": ["drift-report"]}}},
        timeout=10,
    ).json()
    assert any("retrain requested" in artifact["data"] for artifact in artifacts)


def test_more_shift_inside_the_cooldown_retrains_nothing(
    demo: subprocess.CompletedProcess[str], workspace: Workspace
) -> None:
    assert demo.returncode == 0
    version = _send(workspace, market.Scenario(new_region_share=0.8), seed=41, prices="none")
    assert version == "2"
    checked = workspace.run("monitor")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    latest = _history(workspace)[-1]
    assert latest.champion_version == "2"
    assert not latest.decision.retrain
    assert "cooldown" in latest.decision.reason
    wait_settled(workspace.settings, flow="retrain")
    assert len(_retrains(workspace)) == 1


def test_rising_error_retrains_and_a_worse_model_is_not_promoted(
    demo: subprocess.CompletedProcess[str], workspace: Workspace
) -> None:
    assert demo.returncode == 0
    settings = workspace.settings
    _wait_out_the_cooldown(workspace)
    _send(workspace, market.Scenario(), seed=42, prices="shuffled")
    checked = workspace.run("monitor")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    latest = _history(workspace)[-1]
    assert latest.decision.retrain, latest.decision.reason
    assert "MAE" in latest.decision.reason

    retrain = loop.wait_for_flow_run(
        settings, "retrain", parameters={"window_id": latest.window.id}, timeout=600
    )
    assert retrain.state == "COMPLETED"
    assert len(_retrains(workspace)) == 2
    client = registry.connect(settings)
    champion = registry.champion(client, settings)
    assert champion is not None
    assert champion.version == "2"  # unchanged: the gate refused the worse model
    rejected = client.get_model_version(settings.mlflow.model_name, "3")
    assert rejected.tags[registry.TAG_GATE] == "rejected"
    assert "worse than champion v2" in rejected.tags[registry.TAG_GATE_REASONS]
    assert rejected.tags[registry.TAG_TRIGGER] == "drift"
    served = loop.served_model(settings)
    assert served is not None
    assert served["version"] == "2"


def _wait_out_the_cooldown(workspace: Workspace) -> None:
    last_retrain = max(e.time for e in _history(workspace) if e.decision.retrain)
    loop.poll(
        lambda: (datetime.now(UTC) - last_retrain).total_seconds() > COOLDOWN_SECONDS,
        what="the cooldown to pass",
        timeout=COOLDOWN_SECONDS + 10,
        interval=1,
    )


def test_a_poisoned_price_feed_is_held_back_and_nothing_is_promoted(
    demo: subprocess.CompletedProcess[str], workspace: Workspace
) -> None:
    """Every reported price times 1.5, each within the target's bounds: the error jumps, the
    monitor asks for a retrain, and the retrain holds the prices back instead of folding them.
    Nothing new reaches lakeFS or the registry, v2 keeps serving, and the user reads why in
    ``lakeloop report`` and in the retrain's Prefect artifact."""
    assert demo.returncode == 0
    settings = workspace.settings
    _wait_out_the_cooldown(workspace)
    client = registry.connect(settings)
    versions_before = len(client.search_model_versions(f"name='{settings.mlflow.model_name}'"))
    lakefs = lakefs_client.connect(settings)
    head_before = lakefs_client.head_commit(lakefs, settings)

    _send(workspace, market.Scenario(), seed=43, prices="inflated")
    checked = workspace.run("monitor")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    latest = _history(workspace)[-1]
    assert latest.decision.retrain, latest.decision.reason

    retrain = loop.wait_for_flow_run(
        settings, "retrain", parameters={"window_id": latest.window.id}, timeout=600
    )
    assert retrain.state == "COMPLETED"
    assert lakefs_client.head_commit(lakefs, settings) == head_before
    assert len(client.search_model_versions(f"name='{settings.mlflow.model_name}'")) == (
        versions_before
    )
    champion = registry.champion(client, settings)
    assert champion is not None
    assert champion.version == "2"
    served = loop.served_model(settings)
    assert served is not None
    assert served["version"] == "2"
    shown = workspace.run("report")
    assert shown.returncode == 0
    [held] = [line for line in shown.stdout.splitlines() if "NOT FOLDED" in line]
    assert f"window={latest.window.id}" in held
    assert "1000 values reported by local" in held
    assert "beyond the tolerance of x1.40" in held
    artifacts = httpx.post(
        f"{settings.prefect_api_url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": ["feedback-check"]}}},
        timeout=10,
    ).json()
    assert any("**not folded**" in artifact["data"] for artifact in artifacts)
