"""The stack under supervisord, with small real services in place of lakeloop's servers: each
one serves HTTP on its port, starts a child (as uvicorn and Prefect do), prints what secret it
was given, refuses to start while its marker file exists, and crashes 3 s after it started while
its crash marker exists.

What a user relies on: `up` twice is one stack; a killed service comes back and its restart is
counted; one that keeps failing is given up on and reported with its log, and `up` then starts
only it, also one that crashes again and again after a good start; services a killed supervisord
left running are found, and stopped by `down` or by the next `up`; a port held by another
program is named with the setting that moves it; `down` leaves no process behind; the
supervisor's configuration holds no secret."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lakeloop.settings import Settings
from tests.utils.net import free_port
from tests.utils.waiting import eventually, eventually_value
from tests.utils.workspace import processes_of
from tooling import supervised
from tooling.stack import Service, StackError

SERVICE = """
import http.server, os, subprocess, sys, threading
port, marker = int(sys.argv[1]), sys.argv[2]
if os.path.exists(marker):
    print("refusing to start: the marker file is there", flush=True)
    sys.exit(3)
if os.path.exists(marker + ".crash"):
    print("will crash in 3 s", flush=True)
    threading.Timer(3, os._exit, (4,)).start()
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
holders = sorted(v for k, v in os.environ.items() if k.startswith("LAKELOOP_STACK_ENV_"))
print("secret:", os.environ.get("TEST_SECRET", "absent"), "holders:", holders, flush=True)
http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""
SECRET = "pw-alpha-123"


def _service(settings: Settings, name: str, **env: str) -> Service:
    folder = settings.state_dir / "services"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "service.py"
    script.write_text(SERVICE)
    port = free_port()
    return Service(
        name=name,
        argv=[sys.executable, str(script), str(port), str(folder / f"{name}.refuse")],
        port=port,
        health_url=f"http://127.0.0.1:{port}/",
        env=env,
        start_timeout=60,
        hint=f"LAKELOOP_{name.upper()}__PORT",
    )


@pytest.fixture
def wanted(settings: Settings) -> Iterator[list[Service]]:
    """Two services, ``alpha`` with a secret; whatever the test left running is stopped after."""
    yield [_service(settings, "alpha", TEST_SECRET=SECRET), _service(settings, "beta")]
    supervised.down(settings)


def _states(settings: Settings) -> dict[str, supervised.ServiceState]:
    found = supervised.status(settings)
    assert found is not None, "no stack runs"
    return {state.name: state for state in found}


def _group(pid: int) -> list[str]:
    found = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True, check=False)
    return found.stdout.split()


def test_up_twice_is_one_stack_and_down_leaves_nothing(
    settings: Settings, wanted: list[Service]
) -> None:
    first = supervised.start(settings, wanted)
    assert first.launched
    assert first.started == ["alpha", "beta"]
    pids = {name: state.pid for name, state in _states(settings).items()}
    eventually(lambda: all(len(_group(pid)) == 2 for pid in pids.values()), what="each child")

    again = supervised.start(settings, wanted)
    assert not again.launched
    assert again.started == []
    assert {name: state.pid for name, state in _states(settings).items()} == pids
    config = settings.state_dir / "supervisor" / "supervisord.conf"
    daemons = subprocess.run(
        ["pgrep", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert len(daemons.stdout.split()) == 1

    # Only alpha got the secret; every other name it was held under reached the services empty.
    logs = settings.state_dir / "logs"
    assert f"secret: {SECRET} holders: ['']" in (logs / "alpha.log").read_text()
    assert "secret: absent holders: ['']" in (logs / "beta.log").read_text()
    assert SECRET not in config.read_text()

    assert sorted(supervised.down(settings)) == ["alpha", "beta"]
    eventually(
        lambda: processes_of(settings.state_dir) == "", what="no process of the state folder left"
    )
    eventually(lambda: all(_group(pid) == [] for pid in pids.values()), what="no child left")
    assert supervised.status(settings) is None
    assert supervised.down(settings) == []


def test_a_killed_service_comes_back_and_its_restart_is_counted(
    settings: Settings, wanted: list[Service]
) -> None:
    supervised.start(settings, wanted)
    before = _states(settings)
    os.killpg(before["alpha"].pid, signal.SIGKILL)

    def back() -> supervised.ServiceState | None:
        alpha = _states(settings)["alpha"]
        return alpha if alpha.state == "RUNNING" and alpha.pid != before["alpha"].pid else None

    alpha = eventually_value(back, what="alpha running again under a new pid", interval=0.2)
    assert alpha.restarts == 1
    assert alpha.ready == "ready"
    beta = _states(settings)["beta"]
    assert (beta.pid, beta.restarts) == (before["beta"].pid, 0)


def test_a_service_that_keeps_failing_is_given_up_and_up_starts_only_it(
    settings: Settings, wanted: list[Service]
) -> None:
    supervised.start(settings, wanted)
    before = _states(settings)
    marker = Path(wanted[0].argv[-1])
    marker.touch()  # from now on alpha exits at once
    os.killpg(before["alpha"].pid, signal.SIGKILL)

    alpha = eventually_value(
        lambda: (found := _states(settings)["alpha"]).state == "FATAL" and found,
        what="supervisord giving up on alpha",
        interval=0.2,
    )
    assert alpha.pid == 0
    assert 1 <= alpha.restarts <= supervised.POLICY.start_retries + 1
    assert "refusing to start" in "\n".join(supervised.tail(alpha.log_path, lines=5))

    # Its port taken meanwhile by another program: `up` names the service and the setting.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past alpha's TIME_WAIT
        holder.bind(("127.0.0.1", wanted[0].port))
        holder.listen()
        with pytest.raises(
            StackError, match=rf"port {wanted[0].port} needed by alpha.*ALPHA__PORT"
        ):
            supervised.start(settings, wanted)
    assert _states(settings)["beta"].pid == before["beta"].pid  # the failed `up` stopped nothing

    marker.unlink()
    again = supervised.start(settings, wanted)
    assert again.started == ["alpha"]
    after = _states(settings)
    assert after["beta"].pid == before["beta"].pid
    assert after["alpha"].state in supervised.ALIVE


def test_a_service_that_crashes_again_and_again_after_starting_is_stopped_and_up_restarts_it(
    settings: Settings, wanted: list[Service]
) -> None:
    """supervisord alone would restart it for ever: its start limit covers only failed starts."""
    policy = supervised.RestartPolicy(
        started_after_seconds=1, crash_limit=3, crash_window_seconds=300
    )
    supervised.start(settings, wanted, policy=policy)
    before = eventually_value(
        lambda: (found := _states(settings))["alpha"].state == "RUNNING" and found,
        what="alpha past its start",
        interval=0.2,
    )
    crash_marker = Path(wanted[0].argv[-1] + ".crash")
    crash_marker.touch()  # from now on alpha runs 3 s (a good start), then dies
    os.killpg(before["alpha"].pid, signal.SIGKILL)

    alpha = eventually_value(
        lambda: (found := _states(settings)["alpha"]).state == "FATAL" and found,
        what="the watchdog stopping alpha after 3 crashes",
        timeout=120,
        interval=0.5,
    )
    assert alpha.pid == 0
    assert alpha.ready == "crashed 3 times within 5 min"
    assert alpha.restarts == 3  # after the kill and each crash; the last one stopped at once
    assert "will crash in 3 s" in "\n".join(supervised.tail(alpha.log_path, lines=50))
    assert _states(settings)["beta"].pid == before["beta"].pid

    crash_marker.unlink()
    again = supervised.start(settings, wanted, policy=policy)
    assert again.started == ["alpha"]
    alpha = _states(settings)["alpha"]
    assert alpha.state in supervised.ALIVE
    assert alpha.ready == "ready"


def test_services_a_killed_supervisor_left_running_are_stopped_by_up_and_down(
    settings: Settings, wanted: list[Service]
) -> None:
    supervised.start(settings, wanted)
    first = _states(settings)
    pid_file = settings.state_dir / "supervisor" / "supervisord.pid"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    eventually(lambda: supervised.status(settings) is None, what="supervisord gone")
    left = supervised.orphans(supervised.Supervisor(settings))
    assert {name for name, _ in left} == {"alpha", "beta"}
    assert {first["alpha"].pid, first["beta"].pid} <= {pid for _, pid in left}

    again = supervised.start(settings, wanted)
    assert again.launched
    assert again.orphans_stopped == ["alpha", "beta"]
    assert again.started == ["alpha", "beta"]
    eventually(
        lambda: all(_group(first[name].pid) == [] for name in ("alpha", "beta")),
        what="the orphans and their children stopped",
    )

    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    eventually(lambda: supervised.status(settings) is None, what="supervisord gone")
    assert supervised.down(settings) == ["alpha", "beta"]
    eventually(
        lambda: processes_of(settings.state_dir) == "", what="no process of the state folder left"
    )
    assert supervised.orphans(supervised.Supervisor(settings)) == []


def test_a_service_that_never_starts_is_reported_with_its_last_lines(
    settings: Settings, wanted: list[Service]
) -> None:
    Path(wanted[0].argv[-1]).touch()
    with pytest.raises(StackError, match=r"(?s)alpha exited while starting.*refusing to start"):
        supervised.start(settings, wanted)
    # The `up` that started the supervisor stops it again: nothing is left.
    assert supervised.status(settings) is None
    eventually(
        lambda: processes_of(settings.state_dir) == "", what="no process of the state folder left"
    )


def test_down_signals_nothing_when_no_supervisor_answers(settings: Settings) -> None:
    """A stale pid file (its pid now another program's) and socket: `down` stops nothing."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = settings.state_dir / "supervisor"
        folder.mkdir(parents=True)
        (folder / "supervisord.pid").write_text(str(other.pid))
        (folder / "supervisor.sock").write_text("")
        assert supervised.down(settings) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_following_a_log_prints_new_lines_across_rotation(tmp_path: Path) -> None:
    """`lakeloop logs SERVICE -f`: what was there is not repeated; what is written next is, also
    after supervisord rotated the file (renamed it and started a new one)."""
    log = tmp_path / "api.log"
    log.write_text("old line\n")
    lines = supervised.follow(log, poll=0.01)
    with log.open("a") as writing:
        writing.write("first\nsecond\n")
    assert [next(lines), next(lines)] == ["first", "second"]
    log.rename(tmp_path / "api.log.1")
    log.write_text("after rotation\n")
    assert next(lines) == "after rotation"
