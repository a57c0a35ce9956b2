"""`prefect deploy --all` with the committed prefect.yaml, against a real Prefect server, for a
process pool and a Kubernetes pool: every deployment lands on the chosen pool with its triggers
and schedule."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployments.serve import declared
from lakeloop.settings import Settings, load_settings
from tests.utils.net import free_port
from tooling.stack import Stack, services

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = load_settings(
        state_dir=tmp_path_factory.mktemp("prefect-deploy"), prefect={"port": free_port()}
    )
    [server] = [service for service in services(settings) if service.name == "prefect"]
    stack = Stack(settings)
    try:
        stack.wait(stack.start(server))
        yield settings
    finally:
        stack.down()


def _prefect(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LAKELOOP_"))},
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_HOME": str(settings.state_dir / "client"),
        "LAKELOOP_CODE_DIR": str(ROOT),
        **env,
    }
    return subprocess.run(
        [PREFECT, "--no-prompt", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _deployments(settings: Settings) -> dict[str, dict[str, object]]:
    response = httpx.post(f"{settings.prefect_api_url}/deployments/filter", json={}, timeout=10)
    response.raise_for_status()
    return {d["name"]: d for d in response.json()}


def _automations(settings: Settings) -> dict[str, dict[str, object]]:
    response = httpx.post(f"{settings.prefect_api_url}/automations/filter", json={}, timeout=10)
    response.raise_for_status()
    return {a["name"]: a for a in response.json()}


@pytest.mark.parametrize(("pool", "kind"), [("lakeloop", "process"), ("lakeloop-k8s", "process")])
def test_deploy_all_puts_every_deployment_on_the_chosen_pool(
    prefect: Settings, pool: str, kind: str
) -> None:
    # The Kubernetes pool is created as a process pool here (no prefect-kubernetes, no cluster):
    # what is tested is that the file lands every deployment on the pool it is told to.
    created = _prefect(prefect, "work-pool", "create", pool, "--type", kind, "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect(
        prefect, "deploy", "--all", LAKELOOP_WORK_POOL=pool, LAKELOOP_IMAGE="lakeloop:test"
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    expected = declared(prefect)
    found = _deployments(prefect)
    assert set(found) == {d.name for d in expected}
    for deployment in expected:
        assert found[deployment.name]["work_pool_name"] == pool
        schedules = found[deployment.name]["schedules"]
        assert len(schedules) == (0 if deployment.interval is None else 1)  # type: ignore[arg-type]
    triggers = {t.name for d in expected for t in d.triggers}
    assert triggers <= set(_automations(prefect))
