"""The real API process (``python -m api``) against a real MLflow server with a real registered
model: serving, a hot swap under concurrent load, fuzzing from its own OpenAPI document, a
registry outage, and the prediction log flushed on a graceful stop."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Err, Ok

from lakeloop import registry
from lakeloop.dataset import load_spec
from lakeloop.loop import feedback_headers
from lakeloop.settings import Settings, load_settings
from lakeloop.stores.prediction_log import read_prediction_log
from tests.utils.api_server import register_champion, wait_until_serving
from tests.utils.load import PredictLoad
from tests.utils.net import free_port
from tooling import market
from tooling.stack import Running, Stack, services, stop_processes

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "integration-" + "t" * 24


@dataclasses.dataclass
class Served:
    settings: Settings
    stack: Stack
    mlflow: Running
    api: Running
    url: str
    answered: int = 0
    """Successful predictions made by the tests so far (the log must hold as many rows)."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    configured = load_settings(
        state_dir=tmp_path_factory.mktemp("api-server") / "state",
        mlflow={"port": free_port()},
        api={
            "port": free_port(),
            "admin_token": ADMIN_TOKEN,
            "champion_poll_seconds": 30.0,  # the swap test uses the reload call, not the poll
            "log_flush_seconds": 1.0,
        },
    )
    stack = Stack(configured)
    available = {service.name: service for service in services(configured)}
    mlflow_server = stack.start(available["mlflow"])
    try:
        stack.wait(mlflow_server)
        register_champion(configured, load_spec(), seed=31, commit="1" * 64)
        env = {
            "LAKELOOP_API__PORT": str(configured.api.port),
            "LAKELOOP_MLFLOW__PORT": str(configured.mlflow.port),
            "LAKELOOP_API__ADMIN_TOKEN": ADMIN_TOKEN,
            "LAKELOOP_API__CHAMPION_POLL_SECONDS": "30",
            "LAKELOOP_API__LOG_FLUSH_SECONDS": "1",
        }
        api_server = stack.start(dataclasses.replace(available["api"], env=env))
        stack.wait(api_server)
        url = f"http://127.0.0.1:{configured.api.port}"
        wait_until_serving(url)
        yield Served(configured, stack, mlflow_server, api_server, url)
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


def test_serves_the_registered_champion_with_lineage(
    served: Served, record: dict[str, Any]
) -> None:
    model = httpx.get(f"{served.url}/v1/model").json()
    assert model["version"] == "1"
    assert model["lakefs_commit_id"] == "1" * 64
    assert {"mae", "rmse"} <= set(model["metrics"])
    single = httpx.post(f"{served.url}/v1/predict", json=record)
    assert single.status_code == 200
    assert single.json()["model"]["version"] == "1"
    batch = httpx.post(f"{served.url}/v1/predict/batch", json={"records": [record] * 5})
    assert batch.json()["predictions"] == [single.json()["prediction"]] * 5
    served.answered += 6
    bad = httpx.post(f"{served.url}/v1/predict", json=record | {"median_income": "lots"})
    assert bad.status_code == 422
    assert "median_income" in bad.text


def test_batches_equal_the_logged_models_predictions(served: Served) -> None:
    """The served fast path (a float32 matrix straight into the booster) answers exactly what
    the model logged to MLflow answers through pyfunc, on the same rows, in both batch forms."""
    spec = load_spec()
    frame = market.generate_batch(rows=300, seed=11)[spec.feature_names]
    frame.loc[frame.index[::5], "ocean_proximity"] = "ATLANTIS"  # unknown: routed as missing
    frame.loc[frame.index[1::7], "total_bedrooms"] = float("nan")
    registry.connect(served.settings)  # points MLflow's fluent API at this registry
    logged = mlflow.pyfunc.load_model(f"models:/{served.settings.mlflow.model_name}/1")
    expected = np.asarray(logged.predict(frame))
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    columns = {name: [row[name] for row in rows] for name in spec.feature_names}
    for body in ({"records": rows}, {"columns": columns}):
        response = httpx.post(f"{served.url}/v1/predict/batch", json=body, timeout=30)
        assert response.status_code == 200
        assert response.json()["model"]["version"] == "1"
        answered = np.asarray(response.json()["predictions"], dtype=expected.dtype)
        np.testing.assert_array_equal(answered, expected)
        served.answered += len(rows)


def test_hot_swap_under_concurrent_load_drops_no_request(
    served: Served, record: dict[str, Any]
) -> None:
    with PredictLoad(served.url, record, workers=8) as load:
        load.wait_for_answers("1", count=20)  # the load runs on the old model
        version = register_champion(served.settings, load_spec(), seed=32, commit="2" * 64)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        reloaded = httpx.post(f"{served.url}/v1/admin/reload", headers=headers, timeout=60)
        assert reloaded.json() == {"changed": True, "version": version, "previous_version": "1"}
        load.wait_for_answers(version, count=20)  # and goes on through the swap to the new one
    result = load.result
    served.answered += result.answered
    assert result.failures == []
    # At least the 20 answers each that the first worker was waited for; the rest vary with load.
    assert result.versions["1"] >= 20
    assert result.versions[version] >= 20
    # One worker's answers switch once, from the old version to the new, never back.
    switch = result.sequence.index(version)
    assert set(result.sequence[:switch]) == {"1"}
    assert set(result.sequence[switch:]) == {version}
    metrics = httpx.get(f"{served.url}/metrics").text
    assert "lakeloop_api_model_swaps_total 2.0" in metrics  # the first load, then this swap


def test_reload_without_the_token_is_refused(served: Served) -> None:
    assert httpx.post(f"{served.url}/v1/admin/reload").status_code == 401
    wrong = {"Authorization": "Bearer " + "x" * len(ADMIN_TOKEN)}
    assert httpx.post(f"{served.url}/v1/admin/reload", headers=wrong).status_code == 401


def _never_5xx(operation: Any, mode: GenerationMode, client: httpx.Client, url: str) -> None:
    """Send up to 50 generated requests of one operation; fail on the first 5xx."""

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    def fuzz(case: Any) -> None:
        request = case.as_transport_kwargs(base_url=url)
        response = client.request(
            request["method"],
            request["url"],
            params=request.get("params"),
            headers=request.get("headers"),
            json=request.get("json"),
            content=request.get("data"),
        )
        assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"

    fuzz()


def test_no_input_makes_a_server_error(served: Served) -> None:
    """Every endpoint, fuzzed from the served OpenAPI document (schemathesis, up to 50 valid
    and 50 invalid examples each): never a 5xx (there is a champion, so not even a 503).
    Requests go through httpx: schemathesis's own transport (requests) breaks on the
    urllib3-future this environment also has installed, and its pytest plugin on pytest 9."""
    schema = schemathesis.openapi.from_url(f"{served.url}/schema/openapi.json")
    results = list(schema.get_all_operations())
    assert [result.err() for result in results if isinstance(result, Err)] == []
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == 8
    failures: dict[str, str] = {}
    # With the local client's token, so that the fuzzed feedback bodies are read, not refused.
    with httpx.Client(timeout=30.0, headers=feedback_headers(served.settings)) as client:
        for operation in operations:
            for mode in GenerationMode:
                try:
                    _never_5xx(operation, mode, client, served.url)
                except Unsatisfiable:
                    pass  # no invalid request exists for an operation that takes no input
                except Exception as error:  # report every operation's failure at once
                    failures[f"{operation.label} ({mode.value})"] = str(error)[:2000]
    assert failures == {}


def test_registry_outage_keeps_serving(served: Served, record: dict[str, Any]) -> None:
    stop_processes([("mlflow", served.mlflow.process.pid)])
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (
        httpx.post(f"{served.url}/v1/admin/reload", headers=headers, timeout=60).status_code == 503
    )
    ready = httpx.get(f"{served.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["registry"].startswith("unreachable")
    assert httpx.post(f"{served.url}/v1/predict", json=record).status_code == 200
    served.answered += 1


def test_graceful_stop_flushes_the_prediction_log(served: Served) -> None:
    stop_processes([("api", served.api.process.pid)])
    logged: pd.DataFrame = read_prediction_log(served.settings.object_store)
    # The fuzzer's valid requests are logged too, so the log holds at least what we counted.
    assert len(logged) >= served.answered
    assert {"1", "2"} <= set(logged["model_version"])
    assert logged["prediction_id"].is_unique
