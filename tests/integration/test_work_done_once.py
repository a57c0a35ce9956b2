"""No work done twice in a training: a state of the data the pre-merge hook judged is not judged
again by the flow (data that went around the hook still is, and is refused when bad), and the
champion's score on a holdout is kept per (version, holdout content).

The hook runs for real: lakeFS (the lakeFS-compatible server) calls the gateway's pre-merge hook on
every merge, and the training pipeline runs in process against a real MLflow server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lakefs
import pandas as pd
import pytest

from lakeloop import lakefs_client, registry
from lakeloop.dataset import DatasetSpec
from lakeloop.ingest import inspect_source, write_parquet
from lakeloop.settings import Settings
from pipelines import train
from pipelines.runtime import Runtime
from tests.utils.local_lakefs import gated_repository
from tests.utils.mlflow_server import mlflow_server
from tests.utils.training import lineage, registry_settings
from tooling import market

pytestmark = pytest.mark.integration

SECRET = "work-once-webhook-secret-0123456789"
LAKEFS_SECRET = "work-once-lakefs-secret-0123456789"


@dataclass
class Recording(Runtime):
    """Steps called in process; the artifacts the flow would show in Prefect's UI kept by key."""

    artifacts: dict[str, str] = field(default_factory=dict)

    def artifact(self, key: str, markdown: str, description: str) -> None:
        self.artifacts[key] = markdown


@dataclass(frozen=True)
class Lake:
    settings: Settings
    """The lakeFS and gateway settings, with an MLflow server and no API to deploy to."""
    client: lakefs.Client
    folder: Path

    def publish(self, frame: pd.DataFrame, name: str) -> str:
        """Write-audit-publish ``frame``: the merge into main runs the pre-merge hook."""
        source = inspect_source(write_parquet(frame, self.folder / f"{name}.parquet"))
        published = lakefs_client.publish(
            self.client,
            self.settings,
            [source],
            name=name,
            source="test",
            dataset_version=1,
        )
        assert published.commit_id is not None, published.rejection
        return published.commit_id

    def commit_on_main(self, frame: pd.DataFrame, name: str) -> str:
        """Commit ``frame`` directly on main: around the hook, as a user with write access can."""
        main = lakefs.Repository(self.settings.lakefs.repository, client=self.client).branch(
            self.settings.lakefs.branch
        )
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        main.object(f"{self.settings.lakefs.data_prefix}/direct-{name}/batch.parquet").upload(
            data=buffer.getvalue(), mode="wb"
        )
        return str(main.commit(message=f"{name}, committed directly").get_commit().id)

    def train(self, spec: DatasetSpec, commit_id: str, runtime: Runtime) -> dict[str, Any]:
        return train.train_commit(
            self.settings, spec, self.settings.lakefs.repository, commit_id, runtime=runtime
        )

    def verdict_on(self, spec: DatasetSpec, commit_id: str) -> Any:
        """The training flow's validate step on ``commit_id``."""
        tables = train.read_commit(self.settings, self.settings.lakefs.repository, commit_id)
        ingested = train.ingested_under(
            self.settings, spec, self.settings.lakefs.repository, commit_id, list(tables)
        )
        return train.validate(self.settings, tables, spec, ingested)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    root = tmp_path_factory.mktemp("once")
    with gated_repository(root, webhook_secret=SECRET, lakefs_secret=LAKEFS_SECRET) as gated:
        tested = registry_settings(root)
        settings = gated.settings.model_copy(
            update={"mlflow": tested.mlflow, "training": tested.training, "api": tested.api}
        )
        with mlflow_server(settings):
            yield Lake(settings=settings, client=gated.client, folder=root / "batches")


def test_a_state_the_hook_judged_is_not_judged_again_and_a_changed_one_is(
    lake: Lake, spec: DatasetSpec
) -> None:
    merged = lake.publish(market.generate_batch(rows=3000, seed=1), "first")
    runtime = Recording()
    result = lake.train(spec, merged, runtime)
    assert result["status"] == "promoted"
    assert result["validation"].startswith("verdict reused")
    assert "verdict reused" in runtime.artifacts["validation"]
    assert lake.verdict_on(spec, merged).reused

    # A good table committed directly on main: a state nobody judged, judged in full (the new
    # table checked now), and it passes.
    changed = lake.commit_on_main(market.generate_batch(rows=500, seed=2), "good")
    verdict = lake.verdict_on(spec, changed)
    assert not verdict.reused
    assert [path.rsplit("/", 2)[-2] for path in verdict.checked] == ["direct-good"]
    assert verdict.passed
    assert lake.verdict_on(spec, changed).reused  # judged once, then kept


def test_data_that_bypassed_the_hook_is_validated_in_full_and_refused(
    lake: Lake, spec: DatasetSpec
) -> None:
    bad = market.generate_batch(rows=500, seed=3)
    bad.loc[:99, "median_income"] = -1.0  # a fifth of the rows below the description's bound
    bypassed = lake.commit_on_main(bad, "bad")
    runtime = Recording()
    with pytest.raises(ValueError, match="failed the checks") as refused:
        lake.train(spec, bypassed, runtime)
    assert "median_income" in str(refused.value)
    assert "judged in full: 1 tables checked now" in runtime.artifacts["validation"]
    report = lake.settings.state_dir / "validation" / bypassed
    assert (report / "data_docs" / "index.html").exists()


def scored(outcome: train.Outcome) -> registry.ChampionScore:
    """The champion's score a training was judged against (there always is one here)."""
    assert outcome.champion is not None
    return outcome.champion


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = registry_settings(tmp_path_factory.mktemp("scores"))
    with mlflow_server(settings):
        yield settings


def test_the_champions_score_is_kept_per_version_and_holdout(
    scoring: Settings, spec: DatasetSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    load_version = registry.load_version

    def counted(settings: Settings, *, version: str) -> Any:
        loads.append(version)
        return load_version(settings, version=version)

    monkeypatch.setattr(registry, "load_version", counted)
    weak = scoring.model_copy(
        update={"training": scoring.training.model_copy(update={"n_estimators": 3})}
    )
    first, second = (market.generate_batch(rows=2500, seed=seed) for seed in (41, 42))
    commits = (f"{n:x}" * 64 for n in range(1, 16))

    def trained(settings: Settings, frame: pd.DataFrame) -> train.Outcome:
        return train.train_and_promote(
            settings, spec, frame, lineage=lineage(spec, next(commits)), report=None
        )

    champion = trained(scoring, first)
    assert champion.promoted
    champion_version = champion.logged.version

    # Two weak challengers on the same data: the champion is loaded and scored once.
    once, twice = trained(weak, first), trained(weak, first)
    assert not once.promoted
    assert not twice.promoted
    assert scored(once).version == scored(twice).version == champion_version
    assert not scored(once).reused
    assert scored(twice).reused
    assert scored(twice).metrics == scored(once).metrics
    assert loads == [champion_version]

    # Another holdout: scored again.
    other = trained(weak, second)
    assert not scored(other).reused
    assert loads == [champion_version, champion_version]

    # A new champion on the first holdout: scored again, as it is another model.
    newer = trained(scoring, pd.concat([first, second]))
    assert newer.promoted, newer.failures
    after = trained(weak, first)
    assert scored(after).version == newer.logged.version
    assert not scored(after).reused
    assert loads[-1] == newer.logged.version
