"""Reconcile over real services: the lakeFS-compatible server (no actions installed, so every
webhook is lost, as with the gateway down) and a real MLflow server. Commits missed are found and
trained with reason "reconcile"; commits already trained, marked skip_training, bringing no data,
too recent, or refused by the data checks are not; a second run trains nothing.

Reconcile and training run as the deployed flows run them (the same pipelines), in process
without Prefect; each test has its own repository, so the tests do not depend on each other's
commits."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lakefs_local import create_app as create_lakefs
from lakeloop import lakefs_client, registry
from lakeloop.dataset import DatasetSpec
from lakeloop.events import SKIP_TRAINING_KEY
from lakeloop.ingest import inspect_source, write_parquet
from lakeloop.settings import Settings, load_settings
from pipelines import reconcile as rec
from pipelines import train
from tests.utils.net import free_port, serve_in_thread
from tooling import market
from tooling.stack import Stack, services

pytestmark = pytest.mark.integration

LAKEFS_SECRET = "reconcile-lakefs-secret-0123456789"
NO_GRACE = timedelta(0)
_seeds = itertools.count(100)


@dataclass
class Trainer:
    """The training pipeline the training flow runs (in process); records every call."""

    settings: Settings
    spec: DatasetSpec
    calls: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, repository: str, commit_id: str, reason: str) -> dict[str, Any]:
        self.calls.append((commit_id, reason))
        return train.train_commit(self.settings, self.spec, repository, commit_id, reason=reason)

    def trained(self) -> list[str]:
        return [commit for commit, _ in self.calls]


@dataclass(frozen=True)
class Services:
    settings: Settings
    mlflow: MlflowClient
    folder: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("reconcile")
    lakefs_port = free_port()
    settings = load_settings(
        state_dir=root / "state",
        lakefs={"port": lakefs_port, "secret_access_key": LAKEFS_SECRET},
        mlflow={"port": free_port()},
        training={"max_mae": 90_000, "max_rmse": 120_000, "n_estimators": 15},
        api={"verify_deploy": False},
    )
    lakefs_app = create_lakefs(
        data_dir=root / "lakefs",
        access_key_id=settings.lakefs.access_key_id,
        secret_access_key=LAKEFS_SECRET,
    )
    stack = Stack(settings)
    [mlflow_service] = [s for s in services(settings) if s.name == "mlflow"]
    with serve_in_thread(lakefs_app, port=lakefs_port):
        try:
            stack.wait(stack.start(mlflow_service))
            yield Services(settings, registry.connect(settings), root)
        finally:
            stack.down()


class Repo:
    """One test's own repository, with the ways commits land on its production branch."""

    def __init__(self, running: Services, name: str, spec: DatasetSpec) -> None:
        lakefs_settings = running.settings.lakefs.model_copy(update={"repository": name})
        self.settings = running.settings.model_copy(update={"lakefs": lakefs_settings})
        self.client = lakefs_client.connect(self.settings)
        self.folder = running.folder / name
        self.folder.mkdir()
        lakefs_client.ensure_repository(self.client, self.settings)
        self.trainer = Trainer(self.settings, spec)
        self.mlflow = running.mlflow

    def publish(self, *, metadata: dict[str, str] | None = None) -> str:
        """A write-audit-publish merge of a fresh, good batch (its webhook is lost)."""
        seed = next(_seeds)
        path = write_parquet(
            market.generate_batch(rows=800, seed=seed), self.folder / f"{seed}.parquet"
        )
        published = lakefs_client.publish(
            self.client,
            self.settings,
            [inspect_source(path)],
            name=f"b{seed}",
            source="test",
            dataset_version=1,
            metadata=metadata,
        )
        assert published.commit_id is not None
        return published.commit_id

    def commit_on_main(self, path: str, content: bytes, **metadata: str) -> str:
        """A commit straight onto the production branch (no pre-merge checks on this path)."""
        branch = lakefs_client.main_reference(self.client, self.settings)
        branch.object(path).upload(data=content, mode="wb")
        return str(branch.commit(message=f"add {path}", metadata=metadata).get_commit().id)

    def reconcile(self, mode: rec.Mode, **options: Any) -> rec.Reconciled:
        return rec.reconcile(
            self.settings,
            train=self.trainer,
            mode=mode,
            min_age=options.pop("min_age", NO_GRACE),
            lakefs=self.client,
            mlflow=self.mlflow,
            **options,
        )

    def is_trained(self, commit_id: str) -> bool:
        return registry.run_for_commit(self.mlflow, self.settings, commit_id=commit_id) is not None


def states(result: rec.Reconciled) -> dict[str, str]:
    return {check.commit_id: check.state for check in result.checked}


def test_all_mode_trains_every_missed_commit_oldest_first_and_nothing_twice(
    running: Services, spec: DatasetSpec
) -> None:
    repo = Repo(running, "all-mode", spec)
    trained_by_webhook = repo.publish()
    repo.trainer(repo.settings.lakefs.repository, trained_by_webhook, "lakefs.post-merge")
    skipped = repo.publish(metadata={SKIP_TRAINING_KEY: "true"})
    no_data = repo.commit_on_main("docs/README.md", b"# notes\n")
    lost_first, lost_second = repo.publish(), repo.publish()
    repo.trainer.calls.clear()

    first = repo.reconcile("all")

    assert repo.trainer.calls == [(lost_first, "reconcile"), (lost_second, "reconcile")]
    assert [(t.commit_id, t.status) for t in first.trained] == [
        (lost_first, "promoted"),
        (lost_second, "promoted"),
    ]
    assert repo.is_trained(lost_first)
    assert repo.is_trained(lost_second)
    seen = states(first)
    assert seen[trained_by_webhook] == rec.TRAINED
    assert seen[skipped] == rec.SKIP_MARKED
    assert seen[no_data] == rec.NO_DATA
    # Only the production branch's own line: the ingest branches' commits are not examined.
    main_line = rec.first_parent_line(
        lakefs_client.commit_log(repo.client, repo.settings, ref="main", limit=100)
    )
    assert list(seen) == [commit.id for commit in main_line]
    assert len(main_line) == 6  # the repository's first commit and the five above

    second = repo.reconcile("all")
    assert second.trained == []
    assert repo.trainer.calls == [(lost_first, "reconcile"), (lost_second, "reconcile")]
    assert {seen[c] for c in (lost_first, lost_second)} == {rec.MISSED}
    assert {states(second)[c] for c in (lost_first, lost_second)} == {rec.TRAINED}


def test_newest_mode_trains_only_the_newest_commit_with_data(
    running: Services, spec: DatasetSpec
) -> None:
    repo = Repo(running, "newest-mode", spec)
    older_lost = repo.publish()
    newest_lost = repo.publish()
    marked = repo.commit_on_main("_lakeloop/notes.txt", b"x", **{SKIP_TRAINING_KEY: "true"})

    first = repo.reconcile("newest")

    assert repo.trainer.calls == [(newest_lost, "reconcile")]
    assert repo.is_trained(newest_lost)
    assert not repo.is_trained(older_lost)  # its data is part of the newest commit's
    seen = states(first)
    assert seen[marked] == rec.SKIP_MARKED
    assert seen[older_lost] == rec.COVERED

    second = repo.reconcile("newest")
    assert second.trained == []
    assert states(second)[newest_lost] == rec.TRAINED
    assert len(repo.trainer.calls) == 1


def test_recent_commits_are_left_to_their_webhook(running: Services, spec: DatasetSpec) -> None:
    repo = Repo(running, "too-recent", spec)
    fresh = repo.publish()
    result = repo.reconcile("all", min_age=timedelta(minutes=15))
    assert states(result)[fresh] == rec.TOO_RECENT
    assert repo.trainer.calls == []
    later = repo.reconcile("all", min_age=timedelta(minutes=15), now=_now() + timedelta(hours=1))
    assert [t.commit_id for t in later.trained] == [fresh]


def test_refused_data_is_tried_once_then_left_for_a_person(
    running: Services, spec: DatasetSpec
) -> None:
    repo = Repo(running, "refused", spec)
    bad = market.generate_batch(rows=800, seed=5)
    bad.loc[:199, "median_income"] = -1.0  # a quarter of the rows below the description's bound
    refused = repo.commit_on_main("data/bad.parquet", _parquet(bad))

    first = repo.reconcile("all")
    assert [(t.commit_id, t.status) for t in first.failed] == [(refused, "failed")]
    assert "failed the checks" in first.failed[0].detail

    second = repo.reconcile("all")
    assert states(second)[refused] == rec.REFUSED
    assert second.trained == []
    assert len(repo.trainer.calls) == 1


def test_an_unknown_mode_is_refused(running: Services, spec: DatasetSpec) -> None:
    repo = Repo(running, "bad-mode", spec)
    with pytest.raises(ValueError, match="mode must be"):
        repo.reconcile("every")  # type: ignore[arg-type]


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _now() -> datetime:
    return datetime.now(UTC)
