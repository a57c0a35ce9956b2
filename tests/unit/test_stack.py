"""The local stack's services and the single-service launcher (no real servers; supervision of the
whole stack: tests/unit/test_supervised.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lakeloop.settings import Settings, load_settings
from tests.utils.net import free_port
from tests.utils.waiting import eventually
from tooling.stack import (
    Service,
    Stack,
    StackError,
    child_env,
    find_lakefs,
    port_is_free,
    services,
)
from tooling.supervised import check_ports, configuration


def test_port_in_use_is_reported_with_the_service_name(settings: Settings) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        configured = load_settings(state_dir=settings.state_dir, mlflow={"port": taken})
        with pytest.raises(
            StackError, match=rf"port {taken} needed by mlflow.*LAKELOOP_MLFLOW__PORT"
        ):
            check_ports(services(configured))
    assert port_is_free(taken)


def test_configured_endpoints_are_not_started(settings: Settings) -> None:
    remote = load_settings(
        state_dir=settings.state_dir,
        lakefs={"endpoint": "http://lakefs:8000"},
        mlflow={"tracking_uri": "http://mlflow:5000"},
        prefect={"api_url": "http://prefect:4200/api"},
    )
    assert [service.name for service in services(remote)] == ["gateway", "api"]
    assert {s.name for s in services(settings)} == {"lakefs", "mlflow", "prefect", "gateway", "api"}


def test_every_started_service_binds_loopback(settings: Settings) -> None:
    for service in services(settings):
        assert "0.0.0.0" not in " ".join(service.argv)  # noqa: S104 - asserting its absence
        assert service.health_url.startswith("http://127.0.0.1:")


def test_service_that_dies_while_starting_is_named_with_its_log(settings: Settings) -> None:
    stack = Stack(settings)
    dying = Service(
        name="broken",
        argv=[sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
        port=free_port(),
        health_url=f"http://127.0.0.1:{free_port()}/healthz",
        start_timeout=30,
    )
    running = stack.start(dying)
    with pytest.raises(StackError, match=r"broken exited while starting; see .*broken\.log"):
        stack.wait(running)
    assert "boom" in running.log_path.read_text()
    stack.down()


def test_stopping_a_started_service_stops_its_children(settings: Settings) -> None:
    """A test's own server stops with the whole process group, children included."""
    stack = Stack(settings)
    parent = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"
    )
    running = stack.start(
        Service(name="sleeper", argv=[sys.executable, "-c", parent], port=0, health_url="")
    )
    group = running.process.pid
    eventually(lambda: len(_group_members(group)) == 2, what="the service and the child it started")
    stack.down()
    running.process.wait(timeout=60)
    eventually(lambda: _group_members(group) == [], what="no process of the group left")


def _group_members(group: int) -> list[str]:
    found = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True, check=False)
    return found.stdout.split()


def test_a_lakefs_binary_on_path_is_preferred_and_set_up_unattended(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "bin" / "lakefs"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{binary.parent}:{os.environ['PATH']}")
    found, note = find_lakefs(settings)
    assert found == str(binary)
    assert note == f"lakeFS: {binary}"
    [lakefs] = [s for s in services(settings, lakefs_binary=found) if s.name == "lakefs"]
    assert lakefs.argv[:2] == [str(binary), "run"]
    assert lakefs.env["LAKEFS_INSTALLATION_ACCESS_KEY_ID"] == settings.lakefs.access_key_id
    assert lakefs.env["LAKEFS_INSTALLATION_SECRET_ACCESS_KEY"] == settings.lakefs_secret()
    assert lakefs.env["LAKEFS_LISTEN_ADDRESS"].startswith("127.0.0.1:")
    assert "LAKEFSACTION_LAKELOOP_WEBHOOK_SECRET" in lakefs.env


def test_without_binary_or_download_the_builtin_server_runs_and_says_so(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no lakefs anywhere on it
    monkeypatch.setattr(sys, "exec_prefix", str(tmp_path))  # nor beside this Python
    monkeypatch.setenv("HOME", str(tmp_path))  # nor in ~/.lakefs/bin
    offline = load_settings(state_dir=settings.state_dir, lakefs={"download": False})
    found, note = find_lakefs(offline)
    assert found is None
    assert "built-in lakeFS-compatible server" in note
    assert "download disabled" in note
    [lakefs] = [s for s in services(offline, lakefs_binary=None) if s.name == "lakefs"]
    assert lakefs.argv[1:3] == ["-m", "lakefs_local"]


def test_database_urls_reach_only_their_server_and_never_argv(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL-backed servers: each URL (password included) goes to its own server by
    environment variable; no argv (written in supervisord.conf, shown by `ps`), no line of the
    supervisor's configuration and no other child gets it."""
    prefect_url = "postgresql+asyncpg://prefect:pw-prefect-123@db:5432/prefect"
    mlflow_url = "postgresql://mlflow:pw-mlflow-456@db:5432/mlflow"
    monkeypatch.setenv("LAKELOOP_PREFECT__DATABASE_URL", prefect_url)
    monkeypatch.setenv("LAKELOOP_MLFLOW__BACKEND_STORE_URI", mlflow_url)
    configured = load_settings(
        state_dir=settings.state_dir, mlflow={"artifacts_destination": "s3://models/mlflow"}
    )
    started = {service.name: service for service in services(configured)}
    assert started["prefect"].env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == prefect_url
    assert started["mlflow"].env["MLFLOW_BACKEND_STORE_URI"] == mlflow_url
    mlflow_argv = started["mlflow"].argv
    assert mlflow_argv[mlflow_argv.index("--artifacts-destination") + 1] == "s3://models/mlflow"
    for service in started.values():
        assert "pw-" not in " ".join(service.argv)
        if service.name not in {"prefect", "mlflow"}:
            assert "pw-" not in " ".join(service.env.values())
    assert "pw-" not in " ".join(child_env(configured).values())
    folder = configured.state_dir / "supervisor"
    text, held = configuration(services(configured), folder=folder, logs=folder)
    assert "pw-" not in text
    assert sorted(v for v in held.values() if "pw-" in v) == sorted([prefect_url, mlflow_url])


def test_without_database_urls_the_servers_keep_their_state_in_the_state_folder(
    settings: Settings,
) -> None:
    started = {service.name: service for service in services(settings)}
    state = settings.state_dir
    assert started["prefect"].env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == (
        f"sqlite+aiosqlite:///{state / 'prefect' / 'prefect.db'}"
    )
    assert started["mlflow"].env["MLFLOW_BACKEND_STORE_URI"] == (
        f"sqlite:///{state / 'mlflow' / 'mlflow.db'}"
    )
    assert str(state / "mlflow" / "artifacts") in started["mlflow"].argv
