"""A tuned training against a real MLflow server on loopback, through the training flow's own
steps (called without Prefect): one nested run per trial under the training run, and the
registered version is the training run's model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from lakeloop import registry
from lakeloop.dataset import DatasetSpec
from lakeloop.settings import Settings, load_settings
from pipelines.train import fit, log_and_register
from tests.utils.mlflow_server import mlflow_server
from tests.utils.net import free_port
from tests.utils.training import lineage as model_lineage
from tooling import market

pytestmark = pytest.mark.integration

TRIALS = 3


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    configured = load_settings(
        state_dir=tmp_path_factory.mktemp("tuning") / "state",
        mlflow={"port": free_port()},
        training={"n_estimators": 40, "tune_trials": TRIALS},
    )
    with mlflow_server(configured):
        yield configured


def test_tuned_training_logs_each_trial_under_the_run_and_registers_the_run_model(
    settings: Settings, spec: DatasetSpec, tmp_path_factory: pytest.TempPathFactory
) -> None:
    client = registry.connect(settings)
    frame = market.generate_batch(rows=2000, seed=5)
    lineage = model_lineage(spec, "e" * 64)
    trained = fit(frame, spec, settings, tune=True)
    logged = log_and_register(settings, trained, spec=spec, frame=frame, lineage=lineage)

    parent = client.get_run(logged.run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{logged.run_id}'",
        order_by=[f"tags.`{registry.TAG_TRIAL}` ASC"],
    )
    assert [child.data.tags[registry.TAG_TRIAL] for child in children] == ["0", "1", "2"]
    for child, trial in zip(children, trained.trials, strict=True):
        assert child.info.status == "FINISHED"
        assert child.data.params == {name: str(value) for name, value in trial.params.items()}
        assert child.data.metrics["early_stopping.rmse"] == pytest.approx(trial.metrics["rmse"])
        assert "rmse" not in child.data.metrics  # trials are never scored on the holdout
        assert child.data.tags[registry.TAG_COMMIT] == "e" * 64

    best = min(trained.trials, key=lambda trial: trial.metrics["rmse"])
    assert parent.data.params["tuning.trials"] == str(TRIALS)
    assert parent.data.params["tuning.best_trial"] == str(best.number)
    for name, value in best.params.items():
        assert parent.data.params[name] == str(value)
    assert parent.data.metrics["rmse"] == pytest.approx(trained.metrics["rmse"])

    version = client.get_model_version(settings.mlflow.model_name, logged.version)
    assert version.run_id == logged.run_id
    registered = registry.load_version(settings, version=logged.version)
    features = frame[spec.feature_names].head(50)
    assert np.allclose(registered.predict(features), trained.pipeline.predict(features))


def test_asking_to_tune_a_commit_trained_without_tuning_trains_it_again(
    settings: Settings, spec: DatasetSpec, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Training is idempotent per commit, and per commit *and* tuning when asked to tune."""
    client = registry.connect(settings)
    commit_id = "f" * 64
    frame = market.generate_batch(rows=2000, seed=6)
    lineage = model_lineage(spec, commit_id)

    def train_and_judge(*, tune: bool) -> registry.LoggedModel:
        trained = fit(frame, spec, settings, tune=tune)
        logged = log_and_register(settings, trained, spec=spec, frame=frame, lineage=lineage)
        registry.record_decision(client, settings, logged=logged, reasons=["test"], champion=None)
        return logged

    plain = train_and_judge(tune=False)
    found = registry.run_for_commit(client, settings, commit_id=commit_id)
    assert found is not None
    assert found.info.run_id == plain.run_id
    assert registry.run_for_commit(client, settings, commit_id=commit_id, tuned=True) is None

    tuned = train_and_judge(tune=True)
    found = registry.run_for_commit(client, settings, commit_id=commit_id, tuned=True)
    assert found is not None
    assert found.info.run_id == tuned.run_id
