"""Real Prometheus and Pushgateway servers (Debian's binaries) on free loopback ports, run by the
stack launcher like every other service, and a small client for Prometheus's HTTP API."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from lakeloop.settings import LOOPBACK, load_settings
from tests.utils.net import free_port
from tests.utils.waiting import DEADLINE_SECONDS, eventually_value
from tooling.stack import Service, Stack

T = TypeVar("T")
PROMETHEUS_DEADLINE_SECONDS = 2 * DEADLINE_SECONDS
"""Scrapes and rule evaluations run on their own intervals: the usual deadline, twice."""
REPOSITORY = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPOSITORY / "infra" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
# Debian package that ships each binary, named when a test skips for want of it.
PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-pushgateway": "prometheus-pushgateway",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
}


def binary(name: str) -> str:
    """The path of ``name``, or skip the test naming the package to install."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (Debian package {PACKAGES.get(name, name)})")
    return path


def pushgateway_service(*, port: int | None = None) -> Service:
    """A Pushgateway on loopback, in memory (a restart forgets every group).

    In memory explicitly: Debian's build defaults ``--persistence.file`` to
    ``/var/lib/prometheus/pushgateway.data``, which every run would share and reload."""
    port = port or free_port()
    return Service(
        name="pushgateway",
        argv=[
            binary("prometheus-pushgateway"),
            f"--web.listen-address={LOOPBACK}:{port}",
            "--persistence.file=",
        ],
        port=port,
        health_url=f"http://{LOOPBACK}:{port}/-/ready",
        start_timeout=30.0,
    )


def prometheus_service(config: Path, *, data_dir: Path, port: int | None = None) -> Service:
    """Prometheus on loopback with ``config``, keeping its data under ``data_dir``."""
    port = port or free_port()
    return Service(
        name="prometheus",
        argv=[
            binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address={LOOPBACK}:{port}",
        ],
        port=port,
        health_url=f"http://{LOOPBACK}:{port}/-/ready",
        start_timeout=60.0,
    )


def alertmanager_service(config: Path, *, data_dir: Path, port: int | None = None) -> Service:
    """Alertmanager on loopback with ``config``, its silences and notification log under
    ``data_dir``, clustering off (an empty ``--cluster.listen-address``: one instance)."""
    port = port or free_port()
    return Service(
        name="alertmanager",
        argv=[
            binary("prometheus-alertmanager"),
            f"--config.file={config}",
            f"--storage.path={data_dir}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--cluster.listen-address=",
        ],
        port=port,
        health_url=f"http://{LOOPBACK}:{port}/-/ready",
        start_timeout=30.0,
    )


@contextmanager
def running(service: Service, *, state_dir: Path) -> Iterator[str]:
    """Start ``service``, wait until it is ready, yield its base URL, stop it."""
    stack = Stack(load_settings(state_dir=state_dir))
    try:
        stack.wait(stack.start(service))
        yield f"http://{LOOPBACK}:{service.port}"
    finally:
        stack.down()


@contextmanager
def prometheus_on(config: dict[str, Any], *, folder: Path) -> Iterator[str]:
    """A Prometheus running ``config`` (written to ``folder``, its data there too) for the
    duration of the block; yields its URL."""
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    service = prometheus_service(path, data_dir=folder / "tsdb")
    with running(service, state_dir=folder / "prom") as url:
        yield url


@contextmanager
def pushgateway(state_dir: Path) -> Iterator[str]:
    """A Pushgateway for the duration of the block; yields its URL."""
    with running(pushgateway_service(), state_dir=state_dir) as url:
        yield url


def config_for(
    *, api: str, pushgateway: str, interval: str = "1s", alertmanager: str | None = None
) -> dict[str, Any]:
    """The committed ``infra/prometheus/prometheus.yml`` pointed at a test's servers: its scrape
    jobs' targets replaced, its rule files made absolute, scrapes and rules every ``interval``;
    its alerts sent to ``alertmanager`` (host:port), or nowhere without one."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] |= {"scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(PROMETHEUS_DIR / path) for path in config["rule_files"]]
    if alertmanager is None:
        del config["alerting"]
    else:
        [sender] = config["alerting"]["alertmanagers"]
        sender["static_configs"] = [{"targets": [alertmanager]}]
    targets = {"lakeloop_api": api, "pushgateway": pushgateway}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


class PrometheusClient:
    """The parts of Prometheus's HTTP API the tests read."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=f"{url}/api/v1", timeout=10.0)

    def _data(self, path: str, **params: str) -> Any:
        answer = self.http.get(path, params=params).json()
        if answer["status"] != "success":
            raise ValueError(f"{path} {params}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now; raises if it does not parse."""
        data = self._data("/query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [data["result"]]

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self._data("/rules")["groups"] for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self._data("/alerts")["alerts"]
        return alerts

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self._data("/targets")["activeTargets"]
        return targets


def poll(check: Callable[[], T | None], *, what: str) -> T:
    """What ``check`` returns once it is truthy, asking Prometheus every half second; fail
    naming ``what`` at a deadline long enough for a scrape and a rule evaluation on a loaded
    machine. ``check`` may raise ``ValueError`` meanwhile (a series not there yet)."""
    return eventually_value(
        check, what=what, timeout=PROMETHEUS_DEADLINE_SECONDS, interval=0.5, tolerate=(ValueError,)
    )
