"""The real API process under faults: it keeps answering with the last good model and says what is
wrong in ``/readyz`` and in its metrics.

- MLflow down: ``tests/integration/test_api_server.py::test_registry_outage_keeps_serving``.
- The prediction log cannot write: the predictions folder is replaced by a regular file, so the
  writer's ``mkdir`` and ``open`` fail in the OS (root ignores permission bits, so an unwritable
  folder would not fail here); then the folder comes back.
- A corrupt model artifact: a registered version whose skops file is overwritten with garbage in
  the MLflow server's artifact store becomes the champion; then a good version does.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lakeloop import registry
from lakeloop.dataset import load_spec
from lakeloop.model import train
from lakeloop.settings import Settings, TrainingSettings, load_settings
from lakeloop.stores.objects import ObjectStore
from lakeloop.stores.prediction_log import PREDICTIONS, read_prediction_log
from tests.utils.api_server import register_champion, start_api_with_champion
from tests.utils.net import free_port
from tests.utils.training import lineage as model_lineage
from tests.utils.waiting import eventually
from tooling import market
from tooling.stack import Stack

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "faults-" + "t" * 25
POLL_SECONDS = 0.5


class Faulty:
    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url

    def predict(self, record: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/predict", json=record, timeout=30)

    def ready(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/readyz", timeout=10)
        assert response.status_code == 200, response.text  # degraded, never out of rotation
        body: dict[str, Any] = response.json()
        return body

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of ``name`` (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
        match = re.search(pattern, text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    settings = load_settings(
        state_dir=tmp_path_factory.mktemp("serving-faults") / "state",
        mlflow={"port": free_port()},
        api={"port": free_port(), "admin_token": ADMIN_TOKEN},
    )
    env = {
        "LAKELOOP_API__PORT": str(settings.api.port),
        "LAKELOOP_MLFLOW__PORT": str(settings.mlflow.port),
        "LAKELOOP_API__ADMIN_TOKEN": ADMIN_TOKEN,
        "LAKELOOP_API__CHAMPION_POLL_SECONDS": str(POLL_SECONDS),
        "LAKELOOP_API__LOG_FLUSH_SECONDS": "0.2",
    }
    stack = Stack(settings)
    try:
        url = start_api_with_champion(stack, load_spec(), env=env)
        yield Faulty(settings, url)
    finally:
        stack.down()


@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    spec = load_spec()
    row = market.generate_batch(rows=1, seed=5)[spec.feature_names]
    records: list[dict[str, Any]] = (
        row.astype(object).where(row.notna(), None).to_dict(orient="records")
    )
    return records[0]


# The prediction log's disk fails -----------------------------------------------------------------


def test_prediction_log_write_failure_keeps_serving_and_recovers(
    faulty: Faulty, record: dict[str, Any]
) -> None:
    folder = faulty.settings.state_dir / PREDICTIONS
    labels = '_total{log="predictions"}'
    before = faulty.predict(record)
    assert before.status_code == 200
    first_id = before.json()["prediction_id"]
    # The folder exists from start-up: wait for the segment holding this row, not for the folder.
    eventually(
        lambda: first_id in _logged_ids(faulty.settings.state_dir),
        what="the first prediction is written",
    )
    aside = folder.with_name("predictions-aside")
    folder.rename(aside)
    folder.write_text("not a folder")  # mkdir: FileExistsError; open below it: NotADirectoryError
    try:
        lost_ids = []
        for _ in range(20):
            answer = faulty.predict(record)
            assert answer.status_code == 200, answer.text
            lost_ids.append(answer.json()["prediction_id"])
        eventually(
            lambda: faulty.metric("lakeloop_api_prediction_log_lost_rows", labels) >= 20,
            what="the lost rows are counted",
        )
        # Exactly the 20 sent while the folder was gone: the first row was already on disk.
        assert faulty.metric("lakeloop_api_prediction_log_lost_rows", labels) == 20
        assert faulty.metric("lakeloop_api_prediction_log_write_errors", labels) >= 1
        ready = faulty.ready()
        assert ready["status"] == "degraded"
        assert ready["prediction_log"].startswith("failing: ")
        assert "not being logged" in ready["detail"]
        assert ready["model_version"] == "1"
    finally:
        folder.unlink()
        aside.rename(folder)
    kept_ids = [faulty.predict(record).json()["prediction_id"] for _ in range(5)]
    # The same writer thread writes again: the rows after the fault reach the disk.
    eventually(lambda: faulty.ready()["prediction_log"] == "ok", what="the log writes again")
    eventually(
        lambda: set(kept_ids) <= set(_logged_ids(faulty.settings.state_dir)),
        what="the rows sent after the fault are logged",
    )
    logged = set(_logged_ids(faulty.settings.state_dir))
    assert before.json()["prediction_id"] in logged
    assert logged.isdisjoint(lost_ids)  # counted as lost, not silently half-written
    assert not list(folder.glob("*.tmp"))
    assert faulty.ready()["status"] == "ready"


def _logged_ids(state_dir: Path) -> list[str]:
    frame = read_prediction_log(ObjectStore.folder(state_dir))
    return [] if frame.empty else frame["prediction_id"].tolist()


# A corrupt model artifact becomes the champion ---------------------------------------------------


def _register_unpromoted(settings: Settings, *, seed: int) -> str:
    """A trained, registered version that is not (yet) the champion."""
    spec = load_spec()
    frame = market.generate_batch(rows=2000, seed=seed)
    trained = train(frame, spec, TrainingSettings(n_estimators=30))
    lineage = model_lineage(spec, "c" * 64)
    registry.connect(settings)
    return registry.log_trained(
        settings, trained, spec=spec, training_data=frame, lineage=lineage
    ).version


def _model_dir(settings: Settings, version: str) -> Path:
    """The version's model folder in the MLflow server's artifact store (``models:/m-<id>``)."""
    client = registry.connect(settings)
    source = client.get_model_version(settings.mlflow.model_name, version).source
    assert source is not None
    model_id = source.removeprefix("models:/")
    store = settings.state_dir / "mlflow" / "artifacts"
    [folder] = [path for path in store.rglob(model_id) if path.is_dir()]
    return folder


def _corrupt_artifact(settings: Settings, version: str) -> None:
    """Overwrite the version's model file in the server's artifact store with garbage."""
    model_file = _model_dir(settings, version) / "artifacts" / "model.skops"
    assert model_file.is_file()
    model_file.write_bytes(b"PK\x03\x04 definitely not a skops zip " * 64)


def _promote(settings: Settings, version: str) -> None:
    client = registry.connect(settings)
    client.set_registered_model_alias(
        settings.mlflow.model_name, settings.mlflow.champion_alias, version
    )


def test_corrupt_champion_keeps_the_last_good_version_until_a_good_one(
    faulty: Faulty, record: dict[str, Any]
) -> None:
    served = faulty.predict(record).json()["model"]["version"]
    broken = _register_unpromoted(faulty.settings, seed=41)
    _corrupt_artifact(faulty.settings, broken)
    _promote(faulty.settings, broken)

    eventually(
        lambda: faulty.ready().get("failed_version") == broken,
        what=f"the API reports version {broken} as failed",
    )
    ready = faulty.ready()
    assert ready["status"] == "degraded"
    assert ready["model_version"] == served
    assert ready["load_error"]
    assert f"version {broken}" in ready["detail"]
    assert ready["registry"] == "ok"  # the registry answered; the artifact is what failed
    failures = f'_total{{model_version="{broken}"}}'
    assert faulty.metric("lakeloop_api_model_load_failures", failures) >= 1
    for _ in range(5):
        answer = faulty.predict(record)
        assert answer.status_code == 200
        assert answer.json()["model"]["version"] == served
    assert faulty.metric("lakeloop_api_model_info", f'{{model_version="{served}"}}') == 1.0

    # Polling pauses before trying the broken version again; a forced reload tries now.
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    reload = httpx.post(f"{faulty.url}/v1/admin/reload", headers=headers, timeout=60)
    assert reload.status_code == 503
    assert f"version {broken}" in reload.json()["detail"]
    assert httpx.get(f"{faulty.url}/healthz", timeout=10).status_code == 200

    good = register_champion(faulty.settings, load_spec(), seed=42, commit="d" * 64)
    eventually(
        lambda: faulty.predict(record).json()["model"]["version"] == good,
        what=f"good version {good} is swapped in by the poll",
    )
    ready = faulty.ready()
    assert ready["status"] == "ready"
    assert ready["failed_version"] is None
    assert ready["load_error"] is None


def test_artifact_store_gone_is_a_failed_load_not_a_crash(
    faulty: Faulty, record: dict[str, Any]
) -> None:
    """A version whose model folder was deleted fails like a corrupt one."""
    served = faulty.predict(record).json()["model"]["version"]
    missing = _register_unpromoted(faulty.settings, seed=43)
    shutil.rmtree(_model_dir(faulty.settings, missing))
    _promote(faulty.settings, missing)
    eventually(
        lambda: faulty.ready().get("failed_version") == missing,
        what=f"the API reports version {missing} as failed",
    )
    assert faulty.predict(record).json()["model"]["version"] == served
    _promote(faulty.settings, served)  # the operator moves the alias back
    eventually(
        lambda: faulty.ready()["status"] == "ready",
        what="moving the alias back to the served version clears the failure",
    )
