"""What a person opens in a browser works on a machine with no internet: the real API's and the
real gateway's Swagger pages and the drift report the monitor writes, each opened in headless
Chromium that reaches nothing but loopback (no CDN name resolves), render their content and ask
no other host.

Each test leaves the page's screenshot in its tmp folder (``page.png``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.model import TrainedModel
from lakeloop.settings import load_settings
from lakeloop.stores.objects import ObjectStore
from monitoring.drift import run_drift
from monitoring.store import save_report
from tests.utils.api_server import start_api_with_champion
from tests.utils.browser import OpenedPage, chromium, open_offline, visible_text
from tests.utils.net import free_port
from tooling import market
from tooling.stack import Stack, services

pytestmark = pytest.mark.integration

SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css")
# An operation Swagger UI drew: `operations-<tag>-<operationId>` (the tag section is `tag-...`).
RENDERED_OPERATION = re.compile(r'id="operations-(?!tag-)[^"]*-([A-Za-z]+)"')


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real API process (``python -m api``) serving a champion from a real MLflow server."""
    chromium()  # without a browser, skip before starting any server
    settings = load_settings(
        state_dir=tmp_path_factory.mktemp("pages-offline") / "state",
        mlflow={"port": free_port()},
        api={"port": free_port()},
    )
    env = {
        "LAKELOOP_API__PORT": str(settings.api.port),
        "LAKELOOP_MLFLOW__PORT": str(settings.mlflow.port),
    }
    stack = Stack(settings)
    try:
        yield start_api_with_champion(stack, load_spec(), env=env)
    finally:
        stack.down()


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real gateway process (``python -m gateway``). Its lakeFS and Prefect are ports nothing
    listens on: the page needs neither, and no other test's servers are reached."""
    chromium()
    settings = load_settings(
        state_dir=tmp_path_factory.mktemp("gateway-pages-offline") / "state",
        gateway={"port": free_port()},
        lakefs={"endpoint": f"http://127.0.0.1:{free_port()}"},
        prefect={"api_url": f"http://127.0.0.1:{free_port()}/api"},
    )
    env = {
        "LAKELOOP_GATEWAY__PORT": str(settings.gateway.port),
        "LAKELOOP_LAKEFS__ENDPOINT": str(settings.lakefs.endpoint),
        "LAKELOOP_PREFECT__API_URL": settings.prefect_api_url,
    }
    stack = Stack(settings)
    [gateway] = [service for service in services(settings) if service.name == "gateway"]
    try:
        stack.wait(stack.start(dataclasses.replace(gateway, env=env)))
        yield f"http://127.0.0.1:{settings.gateway.port}"
    finally:
        stack.down()


def rendered_swagger_page(url: str, *, folder: Path) -> OpenedPage:
    """The Swagger page of the service at ``url`` opened offline, checked to show every operation
    of the service's OpenAPI document with files the service served itself, and nothing asked of
    any other host."""
    page = open_offline(f"{url}/schema/swagger", folder=folder)

    document = httpx.get(f"{url}/schema/openapi.json", timeout=10).json()
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert set(RENDERED_OPERATION.findall(page.dom)) == operations, page.screenshot
    assert page.dom.count('class="opblock-summary-path"') == len(operations)
    # Swagger UI came from the service itself, and nothing was asked of any other host.
    assert page.foreign() == []
    assert {f"{url}/schema/swagger-ui/{name}" for name in SWAGGER_FILES} <= set(page.requested)
    return page


def test_swagger_page_renders_every_operation_offline(api_url: str, tmp_path: Path) -> None:
    page = rendered_swagger_page(api_url, folder=tmp_path)
    # The served model's request body is documented: Swagger UI drew its schema (outside the
    # page's script, which carries the whole document as data).
    assert "HouseFeatures" in visible_text(page.dom).split()


def test_gateway_swagger_page_renders_every_operation_offline(
    gateway_url: str, tmp_path: Path
) -> None:
    page = rendered_swagger_page(gateway_url, folder=tmp_path)
    # The webhook bodies lakeFS sends are documented: Swagger UI drew their schemas.
    drawn = visible_text(page.dom).split()
    assert {"RelayedWebhook", "MergeWebhook"} <= set(drawn), page.screenshot


def test_drift_report_renders_offline(
    market_batch: pd.DataFrame, tiny_model: TrainedModel, spec: DatasetSpec, tmp_path: Path
) -> None:
    """Evidently 0.7 writes its script and icon font into the report (``save_html``), so the
    report the monitor stores opens without a network."""
    chromium()

    def predicted(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(prediction=tiny_model.pipeline.predict(frame[spec.feature_names]))

    shifted = market.generate_batch(rows=500, seed=7, scenario=market.Scenario(income_multiplier=2))
    run = run_drift(current=predicted(shifted), reference=predicted(market_batch), spec=spec)
    location = save_report(
        ObjectStore.folder(tmp_path / "store"), run.snapshot, champion_version="1", window_id="w1"
    )

    page = open_offline(Path(location).as_uri(), folder=tmp_path / "browser")

    # Before its script runs the body is one empty <div>: this text is what Evidently drew.
    drawn = visible_text(page.dom)
    assert "Dataset Drift" in drawn, page.screenshot
    assert "Drift in column 'prediction'" in drawn
    assert set(spec.feature_names) <= set(drawn.split())
    assert "median_income num Detected" in drawn  # its row of the drift table
    assert "js-plotly-plot" in page.dom  # and a Plotly chart
    assert page.foreign() == []
