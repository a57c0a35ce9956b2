"""Training runs, lineage and the promotion gate against a real MLflow server on loopback,
through the training pipeline's steps and its judging (``pipelines.train.judge``: the champion
scored, the gate, the promotion), called without Prefect."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from lakeloop import registry
from lakeloop.dataset import DatasetSpec
from lakeloop.model import TUNABLE, TrainedModel, split_rows, train, tune
from lakeloop.settings import Settings, TrainingSettings, load_settings
from pipelines.train import (
    champion_hyperparameters,
    fit,
    judge,
    verify_deployment,
)
from tests.utils.mlflow_server import mlflow_server
from tests.utils.net import free_port
from tooling import market
from tooling.cli import app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    configured = load_settings(
        state_dir=tmp_path_factory.mktemp("registry") / "state",
        mlflow={"port": free_port()},
        training={"max_mae": 90_000, "max_rmse": 120_000},
        api={"verify_deploy": False},  # no API here to serve the new champion
    )
    with mlflow_server(configured):
        yield configured


@pytest.fixture(scope="module")
def client(settings: Settings) -> MlflowClient:
    return registry.connect(settings)


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return market.generate_batch(rows=3000, seed=21)


def _lineage(commit: str) -> registry.Lineage:
    return registry.Lineage(
        repository="housing",
        commit_id=commit,
        validation="passed",
        trigger=registry.trigger_kind("lakefs.post-merge"),
        dataset="california_housing@v1",
    )


def _champion(client: MlflowClient, settings: Settings) -> ModelVersion:
    """The champion, which every test here has by the time it asks."""
    champion = registry.champion(client, settings)
    assert champion is not None
    return champion


def _train_and_judge(
    settings: Settings, spec: DatasetSpec, frame: pd.DataFrame, *, commit: str, trees: int
) -> tuple[TrainedModel, registry.LoggedModel, list[str]]:
    trained = train(frame, spec, TrainingSettings(n_estimators=trees))
    logged = registry.log_trained(
        settings, trained, spec=spec, training_data=frame, lineage=_lineage(commit)
    )
    failures = judge(settings, spec, trained, logged)[1]
    registry.log_reports(settings, trained, spec, run_id=logged.run_id)  # after the decision
    return trained, logged, failures


def test_first_model_is_promoted_with_lineage_on_run_and_version(
    settings: Settings, client: MlflowClient, spec: DatasetSpec, data: pd.DataFrame
) -> None:
    _, logged, failures = _train_and_judge(settings, spec, data, commit="a" * 64, trees=60)
    assert failures == []
    champion = registry.champion(client, settings)
    assert champion is not None
    assert champion.version == logged.version
    assert champion.tags[registry.TAG_COMMIT] == "a" * 64
    assert champion.tags[registry.TAG_GATE] == "promoted"
    assert registry.newest_refusal(client, settings) is None
    run = client.get_run(logged.run_id)
    assert run.data.tags[registry.TAG_TRIGGER] == "commit"
    assert run.data.tags[registry.TAG_VALIDATION] == "passed"
    assert {"mae", "rmse", "mse", "r2", "mape"} <= set(run.data.metrics)
    assert any(key.startswith("mae.ocean_proximity.") for key in run.data.metrics)
    assert any(key.startswith("mae.target_band.") for key in run.data.metrics)
    # The same metrics on MLflow's logged model, where its model pages read them.
    assert run.outputs is not None
    [model_output] = run.outputs.model_outputs
    linked = client.get_logged_model(model_output.model_id).metrics or []
    assert {metric.key for metric in linked} == set(run.data.metrics)
    assert run.inputs is not None
    [dataset_input] = run.inputs.dataset_inputs
    assert f"lakefs://housing/{'a' * 64}/data/" in dataset_input.dataset.source
    artifacts = {a.path for a in client.list_artifacts(logged.run_id, "evaluation")}
    assert {
        "evaluation/residuals.png",
        "evaluation/predicted_vs_actual.png",
        "evaluation/feature_importance.png",
    } <= artifacts
    uri = f"models:/{settings.mlflow.model_name}/{logged.version}"
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text()
    assert "lakeloop==" in requirements
    assert "xgboost==" in requirements


def test_worse_challenger_stays_registered_with_its_reason(
    settings: Settings, client: MlflowClient, spec: DatasetSpec, data: pd.DataFrame
) -> None:
    before = registry.champion(client, settings)
    assert before is not None
    # Two trees on the same data: within the absolute thresholds' reach, far behind the champion.
    _, logged, failures = _train_and_judge(settings, spec, data, commit="b" * 64, trees=2)
    behind = [reason for reason in failures if f"worse than champion v{before.version}'s" in reason]
    assert [reason.split(" ")[0] for reason in behind] == ["MAE", "RMSE"]
    assert all(
        "worse than champion" in reason or "threshold" in reason or "training median" in reason
        for reason in failures
    )
    refused = registry.newest_refusal(client, settings)
    assert refused is not None
    assert (refused.version, refused.commit_id) == (logged.version, "b" * 64)
    assert refused.reasons == "; ".join(failures)
    assert _champion(client, settings).version == before.version
    rejected = client.get_model_version(settings.mlflow.model_name, logged.version)
    assert rejected.tags[registry.TAG_GATE] == "rejected"
    assert (
        "worse than champion" in rejected.tags[registry.TAG_GATE_REASONS]
        or "threshold" in (rejected.tags[registry.TAG_GATE_REASONS])
    )
    challenger = client.get_model_version_by_alias(
        settings.mlflow.model_name, registry.CHALLENGER_ALIAS
    )
    assert challenger.version == logged.version
    assert "champion_mae" in client.get_run(logged.run_id).data.metrics


def test_better_model_is_promoted_and_rollback_restores_the_previous(
    settings: Settings, client: MlflowClient, spec: DatasetSpec, data: pd.DataFrame
) -> None:
    before = registry.champion(client, settings)
    assert before is not None
    more = pd.concat([data, market.generate_batch(rows=6000, seed=22)], ignore_index=True)
    _, logged, failures = _train_and_judge(settings, spec, more, commit="c" * 64, trees=200)
    assert failures == []
    promoted = _champion(client, settings)
    assert promoted.version == logged.version
    assert promoted.tags[registry.TAG_PREVIOUS] == before.version
    assert registry.rollback(client, settings) == (logged.version, before.version)
    assert _champion(client, settings).version == before.version


def test_promotion_the_api_never_serves_is_undone(
    settings: Settings, client: MlflowClient, spec: DatasetSpec, data: pd.DataFrame
) -> None:
    before = registry.champion(client, settings)
    assert before is not None
    unreachable = load_settings(
        state_dir=settings.state_dir,
        mlflow=settings.mlflow.model_dump(),
        training=settings.training.model_dump(),
        # Judged without the deployment check, which this test then runs against no API.
        api={"port": free_port(), "deploy_timeout_seconds": 1.0, "verify_deploy": False},
    )
    more = pd.concat([data, market.generate_batch(rows=9000, seed=23)], ignore_index=True)
    trained, logged, failures = _train_and_judge(
        unreachable, spec, more, commit="d" * 64, trees=250
    )
    assert failures == []
    assert _champion(client, settings).version == logged.version
    champion = registry.ChampionScore(version=before.version, metrics={})
    with pytest.raises(RuntimeError, match=f"champion restored to {before.version}"):
        verify_deployment(unreachable, trained, logged, champion)
    assert _champion(client, settings).version == before.version
    failed = client.get_model_version(settings.mlflow.model_name, logged.version)
    assert failed.tags[registry.TAG_GATE].startswith("rolled back")


def test_a_commit_counts_as_trained_only_once_the_gate_has_judged_its_version(
    settings: Settings, client: MlflowClient, spec: DatasetSpec, data: pd.DataFrame
) -> None:
    commit = "f" * 64
    trained = train(data, spec, TrainingSettings(n_estimators=20))
    logged = registry.log_trained(
        settings, trained, spec=spec, training_data=data, lineage=_lineage(commit)
    )
    registered = client.get_model_version(settings.mlflow.model_name, logged.version)
    assert registered.tags[registry.TAG_GATE] == registry.GATE_PENDING
    assert registered.tags[registry.TAG_COMMIT] == commit
    assert client.get_run(logged.run_id).info.status == "FINISHED"
    assert registry.run_for_commit(client, settings, commit_id=commit) is None

    judge(settings, spec, trained, logged)
    judged = registry.run_for_commit(client, settings, commit_id=commit)
    assert judged is not None
    assert judged.info.run_id == logged.run_id


def test_a_tuned_champion_hands_its_hyperparameters_on_so_new_data_can_win(
    settings: Settings, client: MlflowClient, spec: DatasetSpec, data: pd.DataFrame
) -> None:
    """An untuned training against a tuned champion would start behind it whatever its data;
    it starts from the champion's hyperparameters instead, and says so in its run."""
    name, alias = settings.mlflow.model_name, settings.mlflow.champion_alias
    tuned = tune(data, spec, TrainingSettings(n_estimators=40, tune_trials=3))
    assert tuned.hyperparameters_from == "tuning"
    logged = registry.log_trained(
        settings, tuned, spec=spec, training_data=data, lineage=_lineage("e" * 64)
    )
    client.set_registered_model_alias(name, alias, logged.version)  # promoted by hand
    inherited = champion_hyperparameters(settings)
    assert inherited is not None
    assert inherited[0] == logged.version
    assert inherited[1] == pytest.approx({key: tuned.params[key] for key in TUNABLE})

    newer = market.generate_batch(rows=3000, seed=22)
    trained = fit(newer, spec, settings, inherited=inherited)
    assert trained.hyperparameters_from == f"champion v{logged.version}"
    assert {key: trained.params[key] for key in TUNABLE} == pytest.approx(inherited[1])
    again = registry.log_trained(
        settings, trained, spec=spec, training_data=newer, lineage=_lineage("f" * 64)
    )
    run = client.get_run(again.run_id)
    assert run.data.params[registry.HYPERPARAMETERS_FROM] == f"champion v{logged.version}"
    client.set_registered_model_alias(name, alias, again.version)
    assert champion_hyperparameters(settings) is not None  # handed on again

    plain = _train_and_judge(settings, spec, data, commit="9" * 64, trees=30)[1]
    client.set_registered_model_alias(name, alias, plain.version)
    assert champion_hyperparameters(settings) is None  # the settings' own: nothing to hand on


def test_model_list_shows_every_version_with_its_decision(
    settings: Settings, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = registry.version_rows(client, settings)
    numbers = [int(row.version) for row in rows]
    assert numbers == sorted(numbers, reverse=True)
    # Every version the registry holds, once each.
    registered = client.search_model_versions(f"name='{settings.mlflow.model_name}'")
    assert sorted(numbers) == sorted(int(version.version) for version in registered)
    assert sum(settings.mlflow.champion_alias in row.aliases for row in rows) == 1
    rejected = [row for row in rows if row.decision == "rejected"]
    assert rejected
    assert all(row.reasons for row in rejected)
    assert all(row.commit_id and row.mae is not None for row in rows)

    monkeypatch.setenv("LAKELOOP_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LAKELOOP_MLFLOW__PORT", str(settings.mlflow.port))
    monkeypatch.setenv("COLUMNS", "250")
    shown = CliRunner().invoke(app, ["model", "list"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert any(line.split("│")[1].strip() == rejected[0].version for line in lines if "│" in line)
    assert "rejected" in shown.output
    assert settings.mlflow.champion_alias in shown.output


def test_a_refused_version_promoted_by_hand_records_who_and_why_and_rolls_back(
    settings: Settings, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKELOOP_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LAKELOOP_MLFLOW__PORT", str(settings.mlflow.port))
    runner = CliRunner()
    alias = settings.mlflow.champion_alias
    rejected = next(
        row
        for row in registry.version_rows(client, settings)
        if row.decision == "rejected" and alias not in row.aliases
    )
    before = registry.champion(client, settings)
    assert before is not None

    unexplained = runner.invoke(app, ["model", "promote", rejected.version, "--force"])
    assert unexplained.exit_code == 2
    assert "needs --reason" in unexplained.output
    # Without --force the gate judges it again on the newest data; no lakeFS here to read it.
    unjudged = runner.invoke(app, ["model", "promote", rejected.version])
    assert unjudged.exit_code == 1
    assert f"cannot promote {settings.mlflow.model_name} v{rejected.version}" in unjudged.output
    assert _champion(client, settings).version == before.version

    reason = "holdout too small to trust; checked by hand"
    forced = runner.invoke(
        app, ["model", "promote", rejected.version, "--force", "--reason", reason]
    )
    assert forced.exit_code == 0, forced.output
    promoted = _champion(client, settings)
    assert promoted.version == rejected.version
    tags = promoted.tags
    assert tags[registry.TAG_GATE] == registry.PROMOTED_BY_HAND
    assert tags[registry.TAG_OVERRIDE].endswith(f": {reason}")
    assert tags[registry.TAG_GATE_REASONS] == rejected.reasons  # the gate's own verdict stays
    assert tags[registry.TAG_PREVIOUS] == before.version
    again = runner.invoke(
        app, ["model", "promote", rejected.version, "--force", "--reason", reason]
    )
    assert again.exit_code == 1
    assert "already the champion" in again.output

    rolled = runner.invoke(app, ["model", "rollback"])
    assert rolled.exit_code == 0, rolled.output
    assert _champion(client, settings).version == before.version


def test_the_tuning_policy_searches_when_no_recent_version_was_tuned(
    settings: Settings, client: MlflowClient
) -> None:
    rows = registry.version_rows(client, settings)
    recent_tuned = next(index for index, row in enumerate(rows) if row.tuned)
    # The tuned champion of the hand-on test above, under the two versions trained after it
    # there (from its hyperparameters, then with the settings' own): not the newest.
    assert recent_tuned == 2

    def due(**training: object) -> bool:
        changed = settings.model_copy(
            update={"training": settings.training.model_copy(update=training)}
        )
        return registry.tuning_due(client, changed)

    assert not due(tune_policy="on_request")
    assert due(tune_policy="always")
    assert due(tune_policy="every_n_versions", tune_every=recent_tuned)  # none tuned among them
    assert not due(tune_policy="every_n_versions", tune_every=recent_tuned + 1)

    name, alias = settings.mlflow.model_name, settings.mlflow.champion_alias
    before = registry.champion(client, settings)
    assert before is not None
    assert not rows[[row.version for row in rows].index(before.version)].tuned
    assert not due(tune_policy="when_champion_tuned")
    client.set_registered_model_alias(name, alias, rows[recent_tuned].version)
    assert due(tune_policy="when_champion_tuned")
    client.set_registered_model_alias(name, alias, before.version)


def test_a_commit_trained_again_on_purpose_is_a_new_judged_attempt(
    settings: Settings, client: MlflowClient, spec: DatasetSpec, data: pd.DataFrame
) -> None:
    """`lakeloop train COMMIT --again`: a commit that already trained gets a second version,
    judged by the gate like any other and marked as a new attempt; without --again the same
    second attempt is abandoned as a duplicate (two triggers of one commit)."""
    commit = "7" * 64
    first = _train_and_judge(settings, spec, data, commit=commit, trees=30)[1]
    trained = train(data, spec, TrainingSettings(n_estimators=30))

    duplicate = registry.log_trained(
        settings, trained, spec=spec, training_data=data, lineage=_lineage(commit)
    )
    with pytest.raises(registry.TrackingError, match="trained meanwhile"):
        judge(settings, spec, trained, duplicate)
    name = settings.mlflow.model_name
    assert client.get_model_version(name, duplicate.version).tags[registry.TAG_GATE] == (
        registry.GATE_ABANDONED
    )

    again = registry.log_trained(
        settings,
        trained,
        spec=spec,
        training_data=data,
        lineage=replace(_lineage(commit), again=True),
    )
    judge(settings, spec, trained, again)
    judged = client.get_model_version(name, again.version)
    assert judged.tags[registry.TAG_AGAIN] == "true"
    assert judged.tags[registry.TAG_GATE] in {"promoted", "rejected"}
    newest = registry.run_for_commit(client, settings, commit_id=commit)
    assert newest is not None
    assert newest.info.run_id == again.run_id  # the newest judged attempt answers for the commit
    rows = {row.version: row for row in registry.version_rows(client, settings)}
    assert rows[again.version].trigger == "commit, again"
    assert rows[first.version].trigger == "commit"


def test_promote_judges_a_version_again_on_the_same_holdout_as_the_champion(
    settings: Settings, client: MlflowClient, spec: DatasetSpec, data: pd.DataFrame
) -> None:
    """`lakeloop model promote VERSION` without --force: the gate judges the version against the
    current champion on one holdout; refused, nothing moves and the verdict is recorded; passed,
    it becomes the champion, recording the one it replaced, and rollback undoes it."""
    name = settings.mlflow.model_name
    before = registry.champion(client, settings)
    assert before is not None
    rows = split_rows(data, spec, settings.training)
    weak = _train_and_judge(settings, spec, data, commit="6" * 64, trees=2)[1]

    refused = registry.rejudge(
        client, settings, version=weak.version, rows=rows, spec=spec, commit_id="6" * 64
    )
    assert refused.champion is not None
    assert refused.champion.version == before.version
    assert refused.score.metrics["mae"] > refused.champion.metrics["mae"]
    assert any(f"worse than champion v{before.version}" in reason for reason in refused.reasons)
    assert registry.record_request(client, settings, refused, by="ana") is None
    assert _champion(client, settings).version == before.version
    recorded = client.get_model_version(name, weak.version).tags
    assert recorded[registry.TAG_REQUEST].startswith("ana: on the holdout of 666666666666")
    assert "worse than champion" in recorded[registry.TAG_REQUEST]
    assert recorded[registry.TAG_GATE] == "rejected"  # its own verdict stands

    with pytest.raises(LookupError, match="already the champion"):
        registry.rejudge(
            client, settings, version=before.version, rows=rows, spec=spec, commit_id="6" * 64
        )

    strong = train(data, spec, TrainingSettings(n_estimators=300, learning_rate=0.1))
    candidate = registry.log_trained(
        settings, strong, spec=spec, training_data=data, lineage=_lineage("5" * 64)
    )
    passed = registry.rejudge(
        client, settings, version=candidate.version, rows=rows, spec=spec, commit_id="6" * 64
    )
    assert passed.reasons == [], passed.summary()
    assert passed.score.metrics["mae"] == pytest.approx(strong.metrics["mae"])  # same holdout
    assert registry.record_request(client, settings, passed, by="ana") == before.version
    promoted = _champion(client, settings)
    assert promoted.version == candidate.version
    assert promoted.tags[registry.TAG_GATE] == registry.PROMOTED_ON_REQUEST
    assert promoted.tags[registry.TAG_PREVIOUS] == before.version
    assert "passes the gate" in promoted.tags[registry.TAG_REQUEST]
    assert registry.rollback(client, settings) == (candidate.version, before.version)
