"""Watching the loop from outside: Prefect flow runs, the registry, the API.

The client of a running loop: the training flow's deploy check asks the API to swap and verifies
it (``verify_served``), the CLI starts deployments and follows their runs, and the demo and the
end-to-end tests wait for each hop of commit → run → model → served.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pandas as pd
import tenacity

from lakeloop.settings import LOCAL_CLIENT, Settings

FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RETRAIN_FLOW = "retrain"
"""Name of the flow a drift event starts (flows/retrain.py)."""
MONITOR_DEPLOYMENT = "monitor/monitor-champion"


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


BUSY = frozenset({429, 502, 503})
"""Answers of a Prefect server too busy to serve a request now (503: its database is locked or
its pool exhausted, on a loaded machine); Prefect's own client retries them."""
BUSY_SECONDS = 60.0
"""How long :func:`prefect_request` keeps asking a busy Prefect server."""


def prefect_request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request to the Prefect server, asked again with backoff while the server is busy
    (:data:`BUSY`) or refuses the connection (the request never reached it, so asking again
    cannot do anything twice), for up to :data:`BUSY_SECONDS`; the last answer otherwise."""
    retrying = tenacity.Retrying(
        retry=(
            tenacity.retry_if_exception_type(httpx.ConnectError)
            | tenacity.retry_if_result(lambda response: response.status_code in BUSY)
        ),
        wait=tenacity.wait_exponential_jitter(initial=0.5, max=8.0),
        stop=tenacity.stop_after_delay(BUSY_SECONDS),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    response: httpx.Response = retrying(httpx.request, method, url, **kwargs)
    return response


def flow_runs(settings: Settings, body: dict[str, Any]) -> list[FlowRun]:
    """Prefect flow runs matching a ``/flow_runs/filter`` body, oldest first."""
    response = prefect_request(
        "POST",
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
    found = prefect_request("GET", f"{api}/deployments/name/{name}", timeout=10.0)
    if found.status_code == 404:
        raise LoopError(f"no deployment {name} on the Prefect server at {api}; is the stack up?")
    found.raise_for_status()
    created = prefect_request(
        "POST",
        f"{api}/deployments/{found.json()['id']}/create_flow_run",
        json={"parameters": parameters or {}},
        timeout=10.0,
    )
    created.raise_for_status()
    run_id = created.json()["id"]

    def latest() -> FlowRun:
        response = prefect_request("GET", f"{api}/flow_runs/{run_id}", timeout=10.0)
        response.raise_for_status()
        return FlowRun.from_api(response.json())

    return follow_run(latest, what=f"a run of {name}", timeout=timeout, on_state=on_state)


def follow_run(
    latest: Callable[[], FlowRun | None],
    *,
    what: str,
    timeout: float,
    on_state: Callable[[str], None] = lambda _: None,
) -> FlowRun:
    """Poll ``latest`` (the run to follow, or None while there is none yet) until the run is in a
    final state, reporting each state change; raise :class:`LoopError` unless it completed."""
    seen: list[str] = []

    def finished() -> FlowRun | None:
        run = latest()
        if run is None:
            return None
        if not seen or seen[-1] != run.state:
            seen.append(run.state)
            on_state(f"flow run {run.name}: {run.state.lower()}")
        return run if run.state in FINAL_STATES else None

    run: FlowRun = poll(finished, what=what, timeout=timeout)
    if run.state != "COMPLETED":
        raise LoopError(f"flow run {run.name} ({what}) ended {run.state}: {run.state_message}")
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

    def latest() -> FlowRun | None:
        runs = training_runs(settings, commit_id=commit_id)
        return runs[-1] if runs else None

    return follow_run(
        latest,
        what=f"the training run of commit {commit_id:.8}",
        timeout=timeout,
        on_state=on_state,
    )


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
    secret = settings.api_admin_token()
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
        f"{settings.api_url}/v1/predict/batch",
        json={"records": records},
        headers=prediction_headers(settings),
        timeout=30.0,
    )
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame as JSON-ready records, as a client sends them: missing values become null."""
    records: list[dict[str, Any]] = (
        frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    )
    return records


def send_traffic(
    settings: Settings, records: list[dict[str, Any]], *, batch: int = 500
) -> tuple[list[float], list[str], str]:
    """POST ``records`` to the API in batches, as a client would; returns the predictions, their
    ids and the version that answered the last batch."""
    predictions: list[float] = []
    ids: list[str] = []
    version = ""
    for start in range(0, len(records), batch):
        answer = predict(settings, records[start : start + batch])
        predictions += answer["predictions"]
        ids += answer["prediction_ids"]
        version = answer["model"]["version"]
    return predictions, ids, version


def prediction_headers(settings: Settings) -> dict[str, str]:
    """The header that lets this command line ask for predictions: the first configured
    prediction client's token (none when predictions are open)."""
    clients = settings.prediction_clients()
    return {"Authorization": f"Bearer {next(iter(clients.values()))}"} if clients else {}


def feedback_headers(settings: Settings) -> dict[str, str]:
    """The header that lets this command line report prices (``POST /v1/feedback``): the
    ``local`` client's token, or the first configured client's."""
    clients = settings.feedback_clients()
    token = clients.get(LOCAL_CLIENT) or next(iter(clients.values()))
    return {"Authorization": f"Bearer {token}"}


def report_prices(settings: Settings, prediction_ids: list[str], prices: list[float]) -> None:
    """Report the sale price of each earlier prediction (``POST /v1/feedback``). The ids are
    ones the API issued (:func:`send_traffic` returns them): an id not in its prediction log is
    a 404, raised."""
    headers = feedback_headers(settings)
    with httpx.Client(base_url=settings.api_url, timeout=10.0, headers=headers) as client:
        for prediction_id, price in zip(prediction_ids, prices, strict=True):
            response = client.post(
                "/v1/feedback", json={"prediction_id": prediction_id, "actual": price}
            )
            response.raise_for_status()


def wait_for_logged(
    settings: Settings,
    *,
    model_version: str,
    since: datetime,
    rows: int,
    feedback_rows: int = 0,
    timeout: float = 60.0,
) -> None:
    """Wait until the API's logs hold at least ``rows`` predictions of this version and
    ``feedback_rows`` reported prices made since ``since`` (both logs are written in segments
    every few seconds)."""
    from lakeloop.stores.prediction_log import read_feedback_log, read_prediction_log  # noqa: PLC0415

    def logged() -> bool:
        log = read_prediction_log(settings.object_store, since=since)
        count = 0 if log.empty else int((log["model_version"] == model_version).sum())
        reported = len(read_feedback_log(settings.object_store, since=since))
        return count >= rows and reported >= feedback_rows

    poll(
        logged,
        what=f"{rows} logged predictions of v{model_version} and {feedback_rows} reported prices",
        timeout=timeout,
    )


def wait_for_flow_run(
    settings: Settings,
    flow_name: str,
    *,
    parameters: dict[str, Any],
    timeout: float = 600.0,
    on_state: Callable[[str], None] = lambda _: None,
) -> FlowRun:
    """Wait for a run of ``flow_name`` whose parameters include ``parameters`` (one started by a
    trigger, say) to finish; raise :class:`LoopError` if it did not complete."""

    def latest() -> FlowRun | None:
        runs = runs_of_flow(settings, flow_name)
        matching = [run for run in runs if parameters.items() <= run.parameters.items()]
        return matching[-1] if matching else None

    return follow_run(
        latest, what=f"a {flow_name} run with {parameters}", timeout=timeout, on_state=on_state
    )


def wait_for_new_champion(
    settings: Settings, *, replacing: str, timeout: float = 600.0
) -> dict[str, Any]:
    """Wait until the API serves a version other than ``replacing``."""

    def swapped() -> dict[str, Any] | None:
        model = served_model(settings)
        return model if model and model["version"] != replacing else None

    result: dict[str, Any] = poll(
        swapped, what=f"the API to serve a new champion (replacing v{replacing})", timeout=timeout
    )
    return result


def flow_run_logs(settings: Settings, run_id: str, *, limit: int = 20) -> list[str]:
    """The last ``limit`` log messages of a flow run, oldest first."""
    response = httpx.post(
        f"{settings.prefect_api_url}/logs/filter",
        json={
            "logs": {"flow_run_id": {"any_": [run_id]}},
            "sort": "TIMESTAMP_DESC",
            "limit": limit,
        },
        timeout=10.0,
    )
    response.raise_for_status()
    return [entry["message"] for entry in reversed(response.json())]
