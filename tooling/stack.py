"""The local stack's services: which servers run for the settings (the lakeFS binary or the
built-in server, MLflow, Prefect, the gateway, the API, the flow server), their environment, and
when each one is ready. :mod:`tooling.supervised` runs them under supervisord for `lakeloop up`.

:class:`Stack` runs single services as children of the calling process, each in its own session
(so stopping it stops its children too), logging to ``<state>/logs/<service>.log``: what tests
and benchmarks use for a server they start, kill and start again themselves, with no supervisor
restarting it behind their back.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lakeloop.settings import LOOPBACK, Settings

logger = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A service could not be started or did not become ready."""


@dataclass(frozen=True)
class Service:
    """One server process of the local stack."""

    name: str
    argv: list[str]
    port: int
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 120.0
    """Seconds to wait for the health URL (Prefect needs 13-16 s cold here)."""
    hint: str = ""
    """What to set to move it, shown when its port is taken."""
    status_url: str = ""
    """What `lakeloop status` asks to say whether it is ready (default: the health URL)."""


@dataclass
class Running:
    service: Service
    process: subprocess.Popen[bytes]
    log_path: Path


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether nothing listens on ``host:port`` (a bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


# Settings whose values carry a database password. Only the server that uses one gets it, in
# the environment variable that server reads (see ``services``); every other child goes without.
DATABASE_URL_VARIABLES = ("LAKELOOP_PREFECT__DATABASE_URL", "LAKELOOP_MLFLOW__BACKEND_STORE_URI")


def child_env(settings: Settings) -> dict[str, str]:
    """Environment shared by every child: the caller's, plus where everything is."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in DATABASE_URL_VARIABLES
    }
    env.update(
        {
            "LAKELOOP_STATE_DIR": str(settings.state_dir),
            "PREFECT_API_URL": settings.prefect_api_url,
            "PREFECT_HOME": str(settings.state_dir / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            # serve() asks for scheduled runs every second instead of every 10 s.
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "GX_ANALYTICS_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            # XGBoost's OpenMP threads spin while they wait for a core; on a laptop whose cores
            # are busy with the API and the servers, a 0.4 s fit took 2-30 s (benchmarks.training
            # --steps). Passive waiting gives the cores back.
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        }
    )
    # The children keep their logs, history and reports where the launcher reads them.
    if settings.store.url:
        env["LAKELOOP_STORE__URL"] = settings.store.url
    if settings.store.endpoint_url:
        env["LAKELOOP_STORE__ENDPOINT_URL"] = settings.store.endpoint_url
    return env


def services(settings: Settings, *, lakefs_binary: str | None = None) -> list[Service]:
    """The services the stack starts for these settings; configured endpoints are not started."""
    python = sys.executable
    started: list[Service] = []
    if settings.lakefs.endpoint is None:
        started.append(_lakefs_service(settings, lakefs_binary))
    if settings.mlflow.tracking_uri is None:
        started.append(_mlflow_service(settings))
    if settings.prefect.api_url is None:
        started.append(_prefect_service(settings))
    started.append(
        Service(
            name="gateway",
            argv=[python, "-m", "gateway"],
            port=settings.gateway.port,
            health_url=f"http://{LOOPBACK}:{settings.gateway.port}/healthz",
            hint="LAKELOOP_GATEWAY__PORT",
        )
    )
    started.append(
        Service(
            name="api",
            argv=[python, "-m", "api"],
            port=settings.api.port,
            health_url=f"http://{LOOPBACK}:{settings.api.port}/healthz",
            hint="LAKELOOP_API__PORT",
            status_url=f"http://{LOOPBACK}:{settings.api.port}/readyz",  # serving a champion
        )
    )
    return started


MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""Settings of every MLflow server lakeloop starts. MLflow 3 starts, beside each server, a job
runner and seven huey consumers (one Python process each, MLflow imported in each) for its GenAI
jobs (scorers, trace rollups), which lakeloop never submits: eight processes that polled and took
about a core while starting, on a 2-core laptop that also trains."""


def _mlflow_service(settings: Settings) -> Service:
    """``mlflow server`` on the configured database and artifact store, else the state folder."""
    mlflow_dir = settings.state_dir / "mlflow"
    backend = settings.mlflow.backend_store_uri
    return Service(
        name="mlflow",
        argv=[
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--artifacts-destination",
            settings.mlflow.artifacts_destination or str(mlflow_dir / "artifacts"),
            "--host",
            LOOPBACK,
            "--port",
            str(settings.mlflow.port),
            "--workers",
            "1",
        ],
        port=settings.mlflow.port,
        health_url=f"{settings.mlflow_tracking_uri}/health",
        # The backend URI may hold a password: it goes in the variable `mlflow server` reads for
        # --backend-store-uri, never in argv, which supervisord.conf holds and `ps` shows to anyone.
        env={
            "MLFLOW_BACKEND_STORE_URI": (
                backend.get_secret_value()
                if backend is not None
                else f"sqlite:///{mlflow_dir / 'mlflow.db'}"
            ),
            **MLFLOW_SERVER_ENV,
        },
        hint="LAKELOOP_MLFLOW__PORT",
    )


def _prefect_service(settings: Settings) -> Service:
    """``prefect server start`` on the configured database, else SQLite in the state folder."""
    database = settings.prefect.database_url
    return Service(
        name="prefect",
        argv=[
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            LOOPBACK,
            "--port",
            str(settings.prefect.port),
        ],
        port=settings.prefect.port,
        health_url=f"{settings.prefect_api_url}/health",
        env={
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
                database.get_secret_value()
                if database is not None
                else f"sqlite+aiosqlite:///{settings.state_dir / 'prefect' / 'prefect.db'}"
            ),
        },
        hint="LAKELOOP_PREFECT__PORT",
    )


def _lakefs_service(settings: Settings, binary: str | None) -> Service:
    """The real ``lakefs`` binary when there is one, else the built-in lakeFS-compatible server."""
    data_dir = settings.state_dir / "lakefs"
    secret = settings.lakefs_secret()
    # lakeFS only lets actions read variables with this prefix.
    actions_env = {"LAKEFSACTION_LAKELOOP_WEBHOOK_SECRET": settings.webhook_secret()}
    health = f"{settings.lakefs_endpoint}/api/v1/healthcheck"
    if binary:
        return Service(
            name="lakefs",
            argv=[binary, "run", "--local-settings"],
            port=settings.lakefs.port,
            health_url=health,
            env={
                **actions_env,
                "LAKEFS_LISTEN_ADDRESS": f"{LOOPBACK}:{settings.lakefs.port}",
                "LAKEFS_DATABASE_TYPE": "local",
                "LAKEFS_DATABASE_LOCAL_PATH": str(data_dir / "metadata"),
                "LAKEFS_BLOCKSTORE_TYPE": "local",
                "LAKEFS_BLOCKSTORE_LOCAL_PATH": str(data_dir / "data"),
                "LAKEFS_AUTH_ENCRYPT_SECRET_KEY": settings.stored_secret("lakefs_encrypt_key"),
                "LAKEFS_INSTALLATION_USER_NAME": "lakeloop",
                "LAKEFS_INSTALLATION_ACCESS_KEY_ID": settings.lakefs.access_key_id,
                "LAKEFS_INSTALLATION_SECRET_ACCESS_KEY": secret,
            },
            hint="LAKELOOP_LAKEFS__PORT",
        )
    return Service(
        name="lakefs",
        argv=[
            sys.executable,
            "-m",
            "lakefs_local",
            "--host",
            LOOPBACK,
            "--port",
            str(settings.lakefs.port),
            "--data-dir",
            str(data_dir),
        ],
        port=settings.lakefs.port,
        health_url=health,
        env={
            **actions_env,
            "LAKEFS_LOCAL_ACCESS_KEY_ID": settings.lakefs.access_key_id,
            "LAKEFS_LOCAL_SECRET_ACCESS_KEY": secret,
        },
        hint="LAKELOOP_LAKEFS__PORT",
    )


# A failed download is not retried on every start: offline laptops would pay for it each time.
DOWNLOAD_RETRY_SECONDS = 24 * 3600
DOWNLOAD_MARKER = "lakefs-download-failed"


def find_lakefs(settings: Settings) -> tuple[str | None, str]:
    """The ``lakefs`` binary to run, found or downloaded by the lakeFS SDK's own tooling, and one
    line saying which lakeFS the stack will use."""
    if settings.lakefs.endpoint:
        return None, f"lakeFS: the server at {settings.lakefs.endpoint}"
    from lakefs import __main__ as lakefs_tools  # noqa: PLC0415 - the SDK's finder and downloader

    builtin = "lakeFS: the built-in lakeFS-compatible server"
    found = lakefs_tools._find_binary("lakefs")  # PATH, then where the SDK downloads to
    if found:
        return found, f"lakeFS: {found}"
    if not settings.lakefs.download:
        return None, f"{builtin} (no lakefs binary; download disabled)"
    marker = settings.state_dir / DOWNLOAD_MARKER
    if marker.exists() and time.time() - marker.stat().st_mtime < DOWNLOAD_RETRY_SECONDS:
        return None, f"{builtin} (no lakefs binary; download failed earlier: {marker.read_text()})"
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20.0)  # the SDK's downloader sets none
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            lakefs_tools._download_binaries()
    except Exception as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(reason)
        return None, f"{builtin} (no lakefs binary; download failed: {reason})"
    finally:
        socket.setdefaulttimeout(previous_timeout)
    found = lakefs_tools._find_binary("lakefs")
    return (
        found,
        f"lakeFS: {found} (downloaded)" if found else f"{builtin} (download found nothing)",
    )


def flow_server(settings: Settings) -> Service:
    """The process that serves the Prefect deployments; ready once they are registered."""
    flow_name, deployment_name = settings.prefect.train_deployment.split("/")
    return Service(
        name="flows",
        argv=[sys.executable, "-m", "deployments.serve"],
        port=0,
        health_url=f"{settings.prefect_api_url}/deployments/name/{flow_name}/{deployment_name}",
    )


def wait_until_ready(
    url: str,
    *,
    name: str,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    log_path: Path | None = None,
) -> None:
    """Poll ``url`` with a bounded backoff until it answers 2xx; fail naming the service."""
    deadline = time.monotonic() + timeout
    delay, attempt = 0.2, 0
    with httpx.Client(timeout=5.0) as http:
        while True:
            attempt += 1
            try:
                if http.get(url).is_success:
                    return
                problem = "not ready yet"
            except httpx.HTTPError as error:
                problem = type(error).__name__
            if not alive():
                where = f"; see {log_path}" if log_path else ""
                raise StackError(f"{name} exited while starting{where}")
            if time.monotonic() > deadline:
                where = f"; see {log_path}" if log_path else ""
                raise StackError(
                    f"{name} not ready at {url} after {timeout:.0f} s ({problem}){where}"
                )
            logger.debug("waiting for %s (attempt %d): %s", name, attempt, problem)
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)


class Stack:
    """Services started by this process, each a child in its own session."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.running: list[Running] = []

    @property
    def logs(self) -> Path:
        return self.settings.state_dir / "logs"

    def start(self, service: Service) -> Running:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{service.name}.log"
        env = child_env(self.settings) | service.env
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                service.argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopping it stops its children
            )
        running = Running(service=service, process=process, log_path=log_path)
        self.running.append(running)
        return running

    def wait(self, running: Running) -> None:
        wait_until_ready(
            running.service.health_url,
            name=running.service.name,
            timeout=running.service.start_timeout,
            alive=lambda: running.process.poll() is None,
            log_path=running.log_path,
        )

    def down(self) -> None:
        """Stop every service this object started, children included."""
        stop_processes([(r.service.name, r.process.pid) for r in self.running])
        for running in self.running:
            running.process.poll()
        self.running.clear()


def stop_processes(processes: list[tuple[str, int]], *, grace: float = 15.0) -> None:
    """SIGTERM each process group, then SIGKILL what is left after ``grace`` seconds."""
    for _, pid in reversed(processes):
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for name, pid in processes:
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(pid):
            logger.warning("%s (pid %d) ignored SIGTERM; killing it", name, pid)
            _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _group_alive(pid: int) -> bool:
    # A zombie leader keeps its group "alive" to killpg: reap it first when it is our child.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
