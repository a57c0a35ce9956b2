"""The closed loop on loopback with every real part: lakeFS API server, gateway, Prefect server and
its event trigger, MLflow server, the Litestar API. Driven through the `lakeloop` command, as a
user would."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import lakefs
import mlflow.pyfunc
import pytest

from gateway.app import TOKEN_HEADER
from lakeloop import lakefs_client, loop, registry
from lakeloop.ingest import write_parquet
from lakeloop.settings import Settings
from tests.utils.bad_batches import BAD_BATCHES
from tests.utils.waiting import eventually
from tests.utils.workspace import Workspace, new_workspace, processes_of, wait_settled
from tooling import market
from tooling.stack import port_is_free

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = new_workspace(tmp_path_factory.mktemp("loop"))
    yield workspace
    workspace.run("down", timeout=120)


def _main_head(client: lakefs.Client, settings: Settings) -> str:
    repository = lakefs.Repository(settings.lakefs.repository, client=client)
    return str(repository.branch(settings.lakefs.branch).get_commit().id)


def trained_paths(client: lakefs.Client, settings: Settings, ref: str) -> list[str]:
    reference = lakefs.Repository(settings.lakefs.repository, client=client).ref(ref)
    return sorted(info.path for info in reference.objects(prefix=settings.lakefs.data_prefix))


def _training_run_count(settings: Settings) -> int:
    # Training runs only: the scheduled monitor adds runs of its own whenever its schedule says.
    return len(loop.runs_of_flow(settings, "train"))


@pytest.fixture(scope="module")
def demo(workspace: Workspace) -> subprocess.CompletedProcess[str]:
    return workspace.run("demo", "--rows", "4000", "--no-drift")


def test_demo_serves_a_model_trained_from_a_lakefs_commit(
    demo: subprocess.CompletedProcess[str],
) -> None:
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "flow run train-" in demo.stdout
    assert "predictions from housing-price v1" in demo.stdout
    assert "commit → served" in demo.stdout
    for url_name in ("Prefect UI", "MLflow UI", "Swagger UI"):
        assert url_name in demo.stdout


def test_demo_leaves_no_process_and_no_port_behind(
    demo: subprocess.CompletedProcess[str], workspace: Workspace
) -> None:
    assert demo.returncode == 0
    assert processes_of(workspace.settings.state_dir) == ""
    taken = [name for name, port in workspace.ports.items() if not port_is_free(port)]
    assert taken == []


def test_kept_stack_has_lineage_retrains_and_hot_swaps(
    demo: subprocess.CompletedProcess[str], workspace: Workspace
) -> None:
    """After a restart on the same state: the first model's lineage is intact, a new commit
    trains a second version that the API picks up on its own, and a re-delivered webhook for an
    already trained commit trains nothing."""
    assert demo.returncode == 0
    started = workspace.run("up")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    settings = workspace.settings

    first = loop.poll(lambda: loop.served_model(settings), what="the restored champion", timeout=60)
    assert first["version"] == "1"
    client = lakefs_client.connect(settings)
    head = lakefs_client.read_table(
        client, settings, repository=settings.lakefs.repository, ref=first["lakefs_commit_id"]
    )
    assert len(head) == 4000

    runs = loop.training_runs(settings, commit_id=first["lakefs_commit_id"])
    assert [run.state for run in runs] == ["COMPLETED"]
    raw = httpx.get(f"{settings.prefect_api_url}/flow_runs/{runs[0].id}", timeout=10).json()
    assert raw["created_by"]["type"] == "AUTOMATION"  # made by the event trigger, not by hand

    mlflow_client = registry.connect(settings)
    run = mlflow_client.get_run(first["run_id"])
    assert run.data.tags[registry.TAG_COMMIT] == first["lakefs_commit_id"]
    assert run.data.tags[registry.TAG_REPOSITORY] == settings.lakefs.repository
    assert run.data.tags[registry.TAG_VALIDATION] == "passed"

    # A new batch merged into main becomes version 2, served without restarting the API.
    # `lakeloop ingest` of a good file: write-audit-publish, training, hot swap.
    second_batch = market.generate_batch(rows=3000, seed=99)
    second_file = write_parquet(second_batch, settings.state_dir.parent / "second.parquet")
    ingested = workspace.run("ingest", str(second_file))
    assert ingested.returncode == 0, ingested.stdout + ingested.stderr
    head = _main_head(client, settings)
    assert head[:12] in ingested.stdout
    # `ingest` followed the training it started to the gate's decision.
    assert f"{settings.mlflow.model_name} v2: promoted" in ingested.stdout
    loop.wait_for_training(settings, commit_id=head, timeout=300)
    second = loop.wait_until_served(settings, commit_id=head, timeout=60)
    assert second["version"] == "2"
    trained_rows = lakefs_client.read_table(
        client, settings, repository=settings.lakefs.repository, ref=head
    )
    assert len(trained_rows) == 7000

    # `lakeloop ingest` of a bad file: blocked by the pre-merge checks, main and models untouched.
    bad_batch = market.generate_batch(
        rows=1000, seed=5, scenario=market.Scenario(corrupt_share=0.2)
    )
    bad_file = write_parquet(bad_batch, settings.state_dir.parent / "bad.parquet")
    runs_before = _training_run_count(settings)
    blocked = workspace.run("ingest", str(bad_file))
    assert blocked.returncode == 1
    assert "blocked" in blocked.stdout
    assert "column values to" in blocked.stdout  # the failed expectation is named
    assert _main_head(client, settings) == head
    wait_settled(settings, flow="train")
    assert _training_run_count(settings) == runs_before

    # Browsing the data: the log shows the ingest's lineage, show prints the stored table.
    log = workspace.run("data", "log", "-n", "5")
    assert log.returncode == 0
    assert head[:12] in log.stdout
    assert "sha256=" in log.stdout
    shown = workspace.run("data", "show", head, trained_paths(client, settings, head)[-1])
    assert shown.returncode == 0
    assert "3000 rows" in shown.stdout

    # Re-delivering the first commit's webhook (Prefect forgot its ids on restart) trains nothing.
    body = {
        "event_type": "post-merge",
        "event_time": "2026-11-23T10:00:00Z",
        "action_name": "lakeloop-train-trigger",
        "hook_id": "lakeloop_gateway",
        "repository_id": settings.lakefs.repository,
        "branch_id": settings.lakefs.branch,
        "source_ref": "redelivery",
        "commit_id": first["lakefs_commit_id"],
        "commit_message": "",
        "committer": "",
        "commit_metadata": {},
    }
    gateway = f"{settings.gateway.url}/webhooks/lakefs"
    assert httpx.post(gateway, json=body, headers={TOKEN_HEADER: "wrong"}).status_code == 401
    accepted = httpx.post(gateway, json=body, headers={TOKEN_HEADER: settings.webhook_secret()})
    assert accepted.status_code == 202
    loop.poll(
        lambda: (
            len(loop.training_runs(settings, commit_id=first["lakefs_commit_id"])) == 2
            and all(
                r.state in loop.FINAL_STATES
                for r in loop.training_runs(settings, commit_id=first["lakefs_commit_id"])
            )
        ),
        what="the re-delivered run",
        timeout=300,
    )
    # The re-delivery's run is the only one since the blocked ingest: that started none.
    assert _training_run_count(settings) == runs_before + 1
    versions = mlflow_client.search_model_versions(f"name='{settings.mlflow.model_name}'")
    assert sorted(v.version for v in versions) == ["1", "2"]

    # The logged model itself takes raw records, category strings included (MLflow pyfunc).
    champion = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.model_name}@champion")
    raw = second_batch.drop(columns=["median_house_value"]).head(3)
    assert raw["ocean_proximity"].map(type).eq(str).all()
    assert len(champion.predict(raw)) == 3

    # Bad input on the real API: a missing feature is a 422 naming it.
    record = second_batch.drop(columns=["median_house_value", "median_income"]).head(1)
    response = httpx.post(
        f"{settings.api_url}/v1/predict",
        json=record.astype(object).where(record.notna(), None).to_dict("records")[0],
    )
    assert response.status_code == 422
    assert "median_income" in response.text

    # Bad data committed straight to main (around the pre-merge hook): the flow's own gate refuses
    # it, records why in MLflow, and neither the registry nor the served model moves.
    negative_prices, expected = BAD_BATCHES["negative prices"]
    main = lakefs.Repository(settings.lakefs.repository, client=client).branch("main")
    raw = negative_prices(market.generate_batch(rows=1000, seed=8)).to_csv(index=False)
    main.object("data/direct/negative-prices.csv").upload(data=raw, mode="w")
    direct = main.commit(message="direct commit around the checks").get_commit().id
    with pytest.raises(loop.LoopError, match="failed the checks"):
        loop.wait_for_training(settings, commit_id=direct, timeout=300)
    experiment = mlflow_client.get_experiment_by_name(settings.mlflow.experiment)
    assert experiment is not None
    refused = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{registry.TAG_COMMIT}` = '{direct}'",
    )
    assert [run.info.status for run in refused] == ["FAILED"]
    assert expected.split(":")[0] in refused[0].data.tags[registry.TAG_VALIDATION]
    versions = mlflow_client.search_model_versions(f"name='{settings.mlflow.model_name}'")
    assert sorted(v.version for v in versions) == ["1", "2"]
    served = loop.served_model(settings)
    assert served is not None
    assert served["version"] == "2"

    # `lakeloop train` by hand: the commit v2 trained on is already trained, so nothing runs;
    # with --tune it trains again, each hyperparameter trial a nested run under the new one.
    trains_before = _training_run_count(settings)
    again = workspace.run("train", head)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already trained" in again.stdout
    assert "housing-price v2: promoted" in again.stdout
    assert _training_run_count(settings) == trains_before
    tuned = workspace.run("train", head, "--tune")
    assert tuned.returncode == 0, tuned.stdout + tuned.stderr
    assert "housing-price v3: " in tuned.stdout
    tuned_run = registry.run_for_commit(mlflow_client, settings, commit_id=head, tuned=True)
    assert tuned_run is not None
    assert tuned_run.data.tags[registry.TAG_TRIGGER] == "manual"
    trials = mlflow_client.search_runs(
        [tuned_run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{tuned_run.info.run_id}'",
    )
    assert len(trials) == settings.training.tune_trials

    stopped = workspace.run("down", timeout=120)
    assert stopped.returncode == 0
    eventually(
        lambda: processes_of(workspace.settings.state_dir) == "",
        what="no process of the workspace left after `lakeloop down`",
    )
