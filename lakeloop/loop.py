"""Watching the loop from outside: Prefect flow runs, the registry, the API.

Used by the demo and the end-to-end test to wait for each hop of commit → run → model → served.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from lakeloop.settings import Settings

FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class LoopError(RuntimeError):
    """A hop of the loop did not happen in time, or failed."""


ACTIVE_STATES = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED")


@dataclass(frozen=True)
class FlowRun:
    id: str
    name: str
    state: str
    state_message: str
    created: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, run: dict[str, Any]) -> FlowRun:
        state = run.get("state") or {}
        return cls(
            id=run["id"],
            name=run["name"],
            state=state.get("type", "PENDING"),
            state_message=state.get("message") or "",
            created=run["created"],
            parameters=run.get("parameters") or {},
        )


def flow_runs(settings: Settings, body: dict[str, Any]) -> list[FlowRun]:
    """Prefect flow runs matching a ``/flow_runs/filter`` body, oldest first."""
    response = httpx.post(
        f"{settings.prefect_api_url}/flow_runs/filter",
        json={"sort": "EXPECTED_START_TIME_ASC", **body},
        timeout=10.0,
    )
    response.raise_for_status()
    return [FlowRun.from_api(run) for run in response.json()]


def training_runs(settings: Settings, *, commit_id: str) -> list[FlowRun]:
    """Prefect flow runs (named ``train-<commit:8>``) whose ``commit_id`` is this commit."""
    runs = flow_runs(settings, {"flow_runs": {"name": {"any_": [f"train-{commit_id:.8}"]}}})
    return [run for run in runs if run.parameters.get("commit_id") == commit_id]


def runs_of_flow(settings: Settings, flow_name: str, *, active: bool = False) -> list[FlowRun]:
    """Runs of the flow named ``flow_name`` (only unfinished ones with ``active``)."""
    body: dict[str, Any] = {"flows": {"name": {"any_": [flow_name]}}}
    if active:
        body["flow_runs"] = {"state": {"type": {"any_": list(ACTIVE_STATES)}}}
    return flow_runs(settings, body)


def run_deployment(
    settings: Settings,
    name: str,
    *,
    parameters: dict[str, Any] | None = None,
    timeout: float = 600.0,
    on_state: Callable[[str], None] = lambda _: None,
) -> FlowRun:
    """Start a run of the deployment ``flow/deployment`` on the Prefect server and wait for it to
    finish; raise :class:`LoopError` if it does not complete."""
    api = settings.prefect_api_url
    found = httpx.get(f"{api}/deployments/name/{name}", timeout=10.0)
    if found.status_code == 404:
        raise LoopError(f"no deployment {name} on the Prefect server at {api}; is the stack up?")
    found.raise_for_status()
    created = httpx.post(
        f"{api}/deployments/{found.json()['id']}/create_flow_run",
        json={"parameters": parameters or {}},
        timeout=10.0,
    )
    created.raise_for_status()
    run_id = created.json()["id"]
    seen: list[str] = []

    def finished() -> FlowRun | None:
        response = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10.0)
        response.raise_for_status()
        run = FlowRun.from_api(response.json())
        if not seen or seen[-1] != run.state:
            seen.append(run.state)
            on_state(f"flow run {run.name}: {run.state.lower()}")
        return run if run.state in FINAL_STATES else None

    run: FlowRun = poll(finished, what=f"a run of {name}", timeout=timeout)
    if run.state != "COMPLETED":
        raise LoopError(f"flow run {run.name} of {name} ended {run.state}: {run.state_message}")
    return run


def poll(
    check: Callable[[], Any],
    *,
    what: str,
    timeout: float,
    interval: float = 0.5,
    on_wait: Callable[[str], None] = lambda _: None,
) -> Any:
    """Call ``check`` until it returns something truthy; raise :class:`LoopError` after timeout."""
    deadline = time.monotonic() + timeout
    last_problem = ""
    while time.monotonic() < deadline:
        try:
            result = check()
        except httpx.HTTPError as error:
            result, last_problem = None, f"{type(error).__name__}: {error}"
        if result:
            return result
        on_wait(what)
        time.sleep(interval)
    suffix = f" (last error: {last_problem})" if last_problem else ""
    raise LoopError(f"timed out after {timeout:.0f} s waiting for {what}{suffix}")


def wait_for_training(
    settings: Settings,
    *,
    commit_id: str,
    timeout: float = 600.0,
    on_state: Callable[[str], None] = lambda _: None,
) -> FlowRun:
    """Wait until the event trigger created a training run for ``commit_id`` and it finished;
    raise if it did not complete."""
    seen: list[str] = []

    def finished() -> FlowRun | None:
        runs = training_runs(settings, commit_id=commit_id)
        if not runs:
            return None
        run = runs[-1]
        if not seen or seen[-1] != run.state:
            seen.append(run.state)
            on_state(f"flow run {run.name}: {run.state.lower()}")
        return run if run.state in FINAL_STATES else None

    run: FlowRun = poll(
        finished, what=f"the training run of commit {commit_id:.8}", timeout=timeout
    )
    if run.state != "COMPLETED":
        raise LoopError(f"training run {run.name} ended {run.state}: {run.state_message}")
    return run


def served_model(settings: Settings) -> dict[str, Any] | None:
    """What ``GET /v1/model`` answers, or ``None`` while no model is served."""
    response = httpx.get(f"{settings.api_url}/v1/model", timeout=5.0)
    return response.json() if response.status_code == 200 else None


def wait_until_served(
    settings: Settings, *, commit_id: str, timeout: float = 120.0
) -> dict[str, Any]:
    """Wait until the API serves a model trained on ``commit_id``."""

    def serving() -> dict[str, Any] | None:
        model = served_model(settings)
        return model if model and model["lakefs_commit_id"] == commit_id else None

    result: dict[str, Any] = poll(
        serving, what=f"the API to serve the model of commit {commit_id:.8}", timeout=timeout
    )
    return result


def verify_served(
    settings: Settings, *, version: str, records: list[dict[str, Any]], timeout: float
) -> None:
    """Ask the API to check the registry now, then check that it switched to ``version`` and
    answers a smoke prediction with it; raise :class:`LoopError` saying which part failed."""

    def switched() -> bool:
        model = served_model(settings)
        return bool(model and model["version"] == version)

    # The reload call makes the API check the registry now rather than at its next poll; it is
    # best effort (polling gets there too), so a refusal or an unreachable API is not an error.
    token = settings.api.admin_token
    secret = token.get_secret_value() if token else settings.stored_secret("api_admin_token")
    reload = ""
    try:
        reloaded = httpx.post(
            f"{settings.api_url}/v1/admin/reload",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=timeout,
        )
        if reloaded.status_code != 200:
            reload = f"; reload answered {reloaded.status_code}"
    except httpx.HTTPError as error:
        reload = f"; reload failed: {error}"
    poll(
        switched,
        what=f"the API at {settings.api_url} to serve version {version}{reload}",
        timeout=timeout,
    )
    try:
        answer = predict(settings, records)
    except httpx.HTTPError as error:
        raise LoopError(f"smoke prediction against version {version} failed: {error}") from error
    if answer["model"]["version"] != version or len(answer["predictions"]) != len(records):
        raise LoopError(f"smoke prediction was not answered by version {version}: {answer}")


def predict(settings: Settings, records: list[dict[str, Any]]) -> dict[str, Any]:
    """POST records to the prediction API's batch endpoint; the answer has ``predictions``,
    ``prediction_ids`` and ``model``."""
    response = httpx.post(
        f"{settings.api_url}/v1/predict/batch", json={"records": records}, timeout=30.0
    )
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result
