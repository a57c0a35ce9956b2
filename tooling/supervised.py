"""The local stack as a supervised service: supervisord runs lakeloop's servers, lakeloop says
which ones, checks that they answer, and asks supervisord how they are.

supervisord (the ``supervisor`` package) was chosen on measurements (issue 20): it started three
programs in 0.4 s with an 18 MB daemon (circus: 0.8 s, 24 MB, plus zmq, tornado and psutil),
restarted a SIGKILLed program in 0.04 s, stopped whole process groups (circus left the children
of stopped programs running), rotates logs itself, and answers XML-RPC on a unix socket, which
the standard library's ``xmlrpc.client`` speaks.

What each part owns:

- supervisord owns the processes: it starts each program in its own process group, restarts one
  that exits, with a growing backoff (1 s, 2 s, 3 s), and gives up (``FATAL``) after
  ``START_RETRIES`` attempts that each died within ``STARTED_AFTER_SECONDS``; it stops a program's
  whole group (``stopasgroup``/``killasgroup``), and writes ``<state>/logs/<service>.log``.
- lakeloop owns which services run (:func:`tooling.stack.services`), their readiness (each one's
  health URL) and the report. Every service starts at once: the flow server waits for Prefect
  itself, importing the flows' libraries meanwhile (:mod:`deployments.warm`).

Start-up, measured (``benchmarks/stack.py``, alternating runs on the idle 2-core build machine):
a cold `lakeloop up` 14.1 s and 13.8 s, against 14.3 s and 14.0 s with the launcher this replaced,
when `up` returned before the flow server's warm parent had imported; it now waits for it (the
first run is then warm), which costs the CPU those imports take (README, "Using it").
One cost remains: supervisord puts each program in its own process group but all of them in its
one session, where the old launcher gave each server a session of its own. Linux's autogroup
scheduler shares the CPU between sessions, so on a machine busy with other work the whole stack
gets one session's share: a cold `lakeloop up` took 40-44 s against 23-24 s with other test
stacks running beside it. A supervisord child cannot leave the group it is made leader of
(``setsid`` refuses a group leader), so this stays until supervisord can start a program in a
session of its own.

supervisord limits restarts only for failed starts; a service that crashes again and again after
starting well is stopped by ``tooling/watchdog.py``, supervisord's event listener.

Its files live in ``<state>/supervisor/``: the generated ``supervisord.conf`` (from the one
settings object, at ``up``), the socket, the pid file and supervisord's own log, whose
``spawned:`` lines count each service's restarts. The configuration holds no secret: a service's
environment reaches supervisord in its own environment under a private name, which the config
refers to (``%(ENV_…)s``) and every other program receives empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from supervisor.xmlrpc import SupervisorTransport

from lakeloop.settings import Settings
from tooling import watchdog
from tooling.stack import (
    Service,
    StackError,
    child_env,
    find_lakefs,
    flow_server,
    port_is_free,
    services,
    stop_processes,
    wait_until_ready,
)

SUPERVISOR_DIR = "supervisor"
WATCHDOG = "watchdog"
"""supervisord's event listener that stops a service crashing again and again (watchdog.py)."""


@dataclass(frozen=True)
class RestartPolicy:
    """When a service that exits is started again, and when it is given up on."""

    started_after_seconds: int = 10
    """A service that ran this long counts as started; one that dies sooner was a failed start."""
    start_retries: int = 3
    """Attempts after a failed start before supervisord gives up on a service (``FATAL``)."""
    crash_limit: int = 5
    """Exits after a good start within ``crash_window_seconds`` before the watchdog stops it."""
    crash_window_seconds: float = 600.0


POLICY = RestartPolicy()
STOP_SECONDS = 15
"""How long a service may take to stop after SIGTERM before its group gets SIGKILL."""
ORPHAN_STOP_SECONDS = 5
"""The same for a service whose supervisord died (see :func:`stop_orphans`)."""
LOG_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
ALIVE = ("STARTING", "RUNNING", "BACKOFF")
"""supervisord's states of a service it is running or still trying to run."""


@dataclass(frozen=True)
class ServiceState:
    """One service as supervisord and its readiness check see it."""

    name: str
    state: str
    """supervisord's state: RUNNING, STARTING, BACKOFF (retrying), FATAL (gave up: supervisord
    after failed starts, or the watchdog after crashes), STOPPED..."""
    pid: int
    port: int
    uptime: float
    """Seconds since it last started (0 when not running)."""
    restarts: int
    """Starts after the first since the stack came up: crashes supervisord restarted, and
    services `lakeloop up` started again."""
    ready: str
    """What its readiness check answered."""
    log_path: Path


class Supervisor:
    """The supervisord of one state folder, through its XML-RPC interface."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = settings.state_dir / SUPERVISOR_DIR

    @property
    def config_path(self) -> Path:
        return self.folder / "supervisord.conf"

    @property
    def socket_path(self) -> Path:
        return self.folder / "supervisor.sock"

    @property
    def log_path(self) -> Path:
        return self.folder / "supervisord.log"

    @property
    def record_path(self) -> Path:
        """Each service's port and readiness URL, as the stack was started."""
        return self.folder / "services.json"

    def record(self) -> dict[str, dict[str, Any]]:
        if not self.record_path.exists():
            return {}
        record: dict[str, dict[str, Any]] = json.loads(self.record_path.read_text())
        return record

    def _rpc(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def answers(self) -> bool:
        """Whether a supervisord runs for this state folder (its socket answers)."""
        if not self.socket_path.exists():
            return False
        try:
            return bool(self._rpc().getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Error):
            return False

    def launch(self, wanted: list[Service], *, policy: RestartPolicy = POLICY) -> None:
        """Write the configuration for ``wanted`` and start supervisord (no service yet)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        logs = self.settings.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        text, held = configuration(wanted, folder=self.folder, logs=logs, policy=policy)
        self.config_path.write_text(text)
        record = {
            service.name: {
                "port": service.port,
                "status_url": service.status_url or service.health_url,
            }
            for service in wanted
        }
        self.record_path.write_text(json.dumps(record, indent=2))
        self.log_path.unlink(missing_ok=True)  # its spawn lines count this stack's restarts
        (self.folder / watchdog.GAVE_UP_FILE).unlink(missing_ok=True)
        env = child_env(self.settings) | held
        started = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.config_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if started.returncode != 0:
            raise StackError(f"supervisord did not start: {started.stderr.strip()[-500:]}")
        deadline = time.monotonic() + 30
        while not self.answers():
            if time.monotonic() > deadline:
                raise StackError(f"supervisord does not answer on {self.socket_path}")
            time.sleep(0.05)

    def processes(self) -> dict[str, dict[str, Any]]:
        """supervisord's record of each service, by name (its watchdog is not a service)."""
        return {
            info["name"]: info
            for info in self._rpc().getAllProcessInfo()
            if info["name"] != WATCHDOG
        }

    def start(self, name: str) -> None:
        """Start a service (without waiting: readiness is ours to check)."""
        with contextlib.suppress(xmlrpc.client.Fault):  # already started meanwhile
            self._rpc().startProcess(name, False)

    def shutdown(self, *, timeout: float = 120.0) -> None:
        """Stop every service (whole process groups, in reverse start order) and supervisord;
        return once supervisord is gone."""
        rpc = self._rpc()
        pid = int(rpc.getPID())
        infos = rpc.getAllProcessInfo()
        groups = [(info["name"], info["pid"]) for info in infos if info["pid"]]
        deadline = time.monotonic() + timeout
        # supervisord's own shutdown stops one program after the other (each its own group, in
        # reverse priority); here the last started (the flow server, a client of the others)
        # stops first, then every server at once (`lakeloop down`: 8.5 s -> about 6 s).
        started_in_order = list(self.record())
        if started_in_order:
            with contextlib.suppress(xmlrpc.client.Fault):  # not running
                rpc.stopProcess(started_in_order[-1], True)
        with contextlib.suppress(xmlrpc.client.Fault):
            rpc.stopAllProcesses(False)
        while time.monotonic() < deadline and any(info["pid"] for info in rpc.getAllProcessInfo()):
            time.sleep(0.1)
        rpc.shutdown()
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        # supervisord waits for each service's first process only: a child that outlived it
        # (one that ignores SIGTERM) still belongs to the service's group, which is stopped here.
        stop_processes(groups, grace=STOP_SECONDS)

    def last_lines(self, name: str, *, lines: int = 20) -> list[str]:
        """The end of a service's log."""
        return tail(self.settings.state_dir / "logs" / f"{name}.log", lines=lines)

    def restarts(self) -> dict[str, int]:
        """Starts after the first of each service, from supervisord's ``spawned:`` lines."""
        counts: dict[str, int] = {}
        if self.log_path.exists():
            for match in SPAWNED.finditer(self.log_path.read_text(errors="replace")):
                counts[match[1]] = counts.get(match[1], 0) + 1
        return {name: spawns - 1 for name, spawns in counts.items()}


SPAWNED = re.compile(r"spawned: '([^']+)' with pid")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def tail(path: Path, *, lines: int) -> list[str]:
    """The last ``lines`` lines of a log file (none when it does not exist)."""
    if not path.exists():
        return []
    with path.open("rb") as log:
        log.seek(0, os.SEEK_END)
        log.seek(max(0, log.tell() - 256 * lines))
        return log.read().decode(errors="replace").splitlines()[-lines:]


def configuration(
    wanted: list[Service], *, folder: Path, logs: Path, policy: RestartPolicy = POLICY
) -> tuple[str, dict[str, str]]:
    """supervisord's configuration for ``wanted``, and the environment supervisord must start
    with for it: each service's own variables under private names the configuration refers to,
    so no value (a database password, say) is written in the file."""
    held: dict[str, str] = {}
    own: dict[str, dict[str, str]] = {}
    for service in wanted:
        own[service.name] = {}
        for variable, value in service.env.items():
            holder = f"LAKELOOP_STACK_ENV_{len(held)}"
            held[holder] = _quotable(variable, value)
            own[service.name][variable] = f"%(ENV_{holder})s"
    blank = dict.fromkeys(held, "")
    sections = [
        f"[unix_http_server]\nfile={_escape(folder / 'supervisor.sock')}\nchmod=0700\n",
        "[supervisord]\n"
        f"logfile={_escape(folder / 'supervisord.log')}\n"
        f"pidfile={_escape(folder / 'supervisord.pid')}\n"
        f"childlogdir={_escape(logs)}\n"
        f"directory={_escape(Path.cwd())}\n"
        "logfile_backups=0\n",
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
        f"[eventlistener:{WATCHDOG}]\n"
        + "command="
        + _escape(
            shlex.join(
                [
                    sys.executable,
                    "-m",
                    "tooling.watchdog",
                    str(folder),
                    str(policy.crash_limit),
                    str(policy.crash_window_seconds),
                ]
            )
        )
        + f"\ndirectory={_escape(Path.cwd())}\n"
        "events=PROCESS_STATE_EXITED\n"
        "autostart=true\n"
        "autorestart=true\n"
        f"stderr_logfile={_escape(folder / 'watchdog.log')}\n"
        + ("environment=" + ",".join(f'{k}=""' for k in blank) + "\n" if blank else ""),
    ]
    for priority, service in enumerate(wanted, start=1):
        environment = ",".join(f'{k}="{v}"' for k, v in (blank | own[service.name]).items())
        sections.append(
            f"[program:{service.name}]\n"
            f"command={_escape(shlex.join(service.argv))}\n"
            f"directory={_escape(Path.cwd())}\n"
            f"priority={priority}\n"  # started in this order, stopped in the reverse
            "autostart=false\n"  # lakeloop starts each once the ones it needs answer
            "autorestart=true\n"
            f"startsecs={policy.started_after_seconds}\n"
            f"startretries={policy.start_retries}\n"
            "stopsignal=TERM\n"
            f"stopwaitsecs={STOP_SECONDS}\n"
            "stopasgroup=true\n"  # uvicorn workers, Prefect's services: the whole group stops
            "killasgroup=true\n"
            "redirect_stderr=true\n"
            f"stdout_logfile={_escape(logs / f'{service.name}.log')}\n"
            f"stdout_logfile_maxbytes={LOG_BYTES}\n"
            f"stdout_logfile_backups={LOG_BACKUPS}\n"
            + (f"environment={environment}\n" if environment else "")
        )
    return "\n".join(sections), held


def _escape(value: object) -> str:
    """A value for supervisord's configuration, which expands ``%(name)s``."""
    return str(value).replace("%", "%%")


def _quotable(variable: str, value: str) -> str:
    """``value`` as supervisord can pass it: its ``KEY="value"`` list keeps no double quote
    inside a value and strips quotes at either end."""
    if '"' in value or value[:1] == "'" or value[-1:] == "'" or "\n" in value:
        raise StackError(f"{variable} holds a quote or a line break, which supervisord cannot pass")
    return value


@dataclass
class LocalStack:
    """The stack `lakeloop up` found or started."""

    supervisor: Supervisor
    started: list[str]
    """The services this `up` started (the others were running already)."""
    launched: bool
    """Whether this `up` started supervisord itself (the stack was not running)."""
    lakefs_note: str
    """One line saying which lakeFS the stack runs."""
    orphans_stopped: list[str] = field(default_factory=list)
    """Services a supervisord that died had left running, which this `up` stopped first."""

    def down(self) -> None:
        """Stop every service and supervisord."""
        if self.supervisor.answers():
            self.supervisor.shutdown()


def wanted_services(settings: Settings) -> tuple[list[Service], str]:
    """Every service the stack runs for these settings, the flow server last, and which lakeFS."""
    binary, note = find_lakefs(settings)
    return [*services(settings, lakefs_binary=binary), flow_server(settings)], note


def up(settings: Settings, *, progress: Callable[[str], None] = lambda _: None) -> LocalStack:
    """Start what is not running of the stack and wait until every service answers."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    wanted, note = wanted_services(settings)
    return start(settings, wanted, progress=progress, lakefs_note=note)


def start(
    settings: Settings,
    wanted: list[Service],
    *,
    progress: Callable[[str], None] = lambda _: None,
    lakefs_note: str = "",
    policy: RestartPolicy = POLICY,
) -> LocalStack:
    """Start the services of ``wanted`` that are not running, all together (the flow server
    waits for Prefect itself, while its warm parent imports); return when every one answers.
    A service that runs is left alone; a port held by something else fails before anything
    starts, naming the service and the setting that moves it. When this call started supervisord
    and something fails, everything stops again. Services a supervisord that died left running
    are stopped first (they hold the ports, and nothing would restart them)."""
    supervisor = Supervisor(settings)
    launched = not supervisor.answers()
    orphans = stop_orphans(supervisor) if launched else []
    if launched:
        check_ports(wanted)
        supervisor.launch(wanted, policy=policy)
    try:
        known, record = supervisor.processes(), supervisor.record()
        changed = [
            service.name
            for service in wanted
            if service.name not in known or record.get(service.name, {}).get("port") != service.port
        ]
        if changed:
            raise StackError(
                f"the running stack was started with other settings for {', '.join(changed)}: "
                "`lakeloop down`, then `lakeloop up` starts it with the new settings"
            )
        missing = [s for s in wanted if known[s.name]["statename"] not in ALIVE]
        if not launched:
            check_ports(missing)
        watchdog.forget(supervisor.folder, [service.name for service in missing])
        for service in missing:
            supervisor.start(service.name)
        for service in wanted:
            progress(f"waiting for {service.name}")
            wait_ready(supervisor, service)
            progress(f"{service.name} ready")
    except BaseException:
        if launched:
            supervisor.shutdown()
        raise
    return LocalStack(
        supervisor=supervisor,
        started=[service.name for service in missing],
        launched=launched,
        lakefs_note=lakefs_note,
        orphans_stopped=orphans,
    )


def check_ports(wanted: list[Service]) -> None:
    """Fail when a port a service needs is taken, naming the service and how to move it."""
    for service in wanted:
        if service.port and not port_is_free(service.port):
            raise StackError(
                f"port {service.port} needed by {service.name} is already in use by something "
                f"that is not this stack (another lakeloop stack? `lakeloop down` in its folder "
                f"stops one); or choose another port with {service.hint}"
            )


def wait_ready(supervisor: Supervisor, service: Service) -> None:
    """Wait until ``service`` answers its health URL; fail with its last log lines when
    supervisord gave up on it."""

    def alive() -> bool:
        return bool(supervisor.processes()[service.name]["statename"] in ALIVE)

    log_path = supervisor.settings.state_dir / "logs" / f"{service.name}.log"
    try:
        wait_until_ready(
            service.health_url,
            name=service.name,
            timeout=service.start_timeout,
            alive=alive,
            log_path=log_path,
        )
    except StackError as error:
        lines = "\n".join(f"  {line}" for line in supervisor.last_lines(service.name))
        raise StackError(f"{error}; its last log lines:\n{lines}") from error


def orphans(supervisor: Supervisor) -> list[tuple[str, int]]:
    """The processes a supervisord of this folder started that still run (service name, pid):
    after supervisord itself was killed, its services live on. supervisord hands each program
    its socket's URL in ``SUPERVISOR_SERVER_URL``, and their children inherit it."""
    mark = f"SUPERVISOR_SERVER_URL=unix://{supervisor.socket_path}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or another user's
            continue
        if mark in environ and _alive(int(entry.name)):
            name = next(
                (v[24:] for v in environ if v.startswith(b"SUPERVISOR_PROCESS_NAME=")), b"?"
            ).decode(errors="replace")
            if name != WATCHDOG:  # it ends with supervisord (its standard input closes)
                found.append((name, int(entry.name)))
    return sorted(found)


def stop_orphans(supervisor: Supervisor) -> list[str]:
    """Stop what a supervisord that died left running; the services it belonged to."""
    left = orphans(supervisor)
    groups: dict[int, str] = {}
    for name, pid in left:
        with contextlib.suppress(ProcessLookupError):
            groups.setdefault(os.getpgid(pid), name)
    # As `down` does: the last started (the flow server, a client of the others) first. Their
    # output went through supervisord, now gone: a service stopping writes to a closed pipe, and
    # the flow server then ignores SIGTERM (measured), so the grace is short.
    started_in_order = list(supervisor.record())
    last = started_in_order[-1] if started_in_order else None
    for first in (True, False):
        stop_processes(
            [(name, group) for group, name in groups.items() if (name == last) == first],
            grace=ORPHAN_STOP_SECONDS,
        )
    return sorted({name for name, _ in left})


def down(settings: Settings) -> list[str]:
    """Stop the stack of this state folder, if one runs (or what its supervisord, if it died,
    left running); the services that were running."""
    supervisor = Supervisor(settings)
    if not supervisor.answers():
        return stop_orphans(supervisor)
    running = [name for name, info in supervisor.processes().items() if info["pid"]]
    supervisor.shutdown()
    return running


def status(settings: Settings) -> list[ServiceState] | None:
    """Each service of the running stack: supervisord's view and its readiness; None when no
    stack runs in this state folder."""
    supervisor = Supervisor(settings)
    if not supervisor.answers():
        return None
    record, restarts = supervisor.record(), supervisor.restarts()
    stopped_by_watchdog = watchdog.gave_up(supervisor.folder)
    found = []
    for name, info in supervisor.processes().items():
        recorded = record.get(name, {})
        running = info["statename"] in ("RUNNING", "STARTING")
        ready = readiness(recorded["status_url"]) if running and recorded else "-"
        state = info["statename"]
        if state in ("STOPPED", "EXITED") and name in stopped_by_watchdog:
            gave_up = stopped_by_watchdog[name]
            state = "FATAL"
            ready = (
                f"crashed {gave_up['crashes']} times within "
                f"{float(gave_up['window_seconds']) / 60:.0f} min"
            )
        found.append(
            ServiceState(
                name=name,
                state=state,
                pid=int(info["pid"]),
                port=int(recorded.get("port", 0)),
                uptime=float(info["now"] - info["start"]) if info["pid"] else 0.0,
                restarts=max(restarts.get(name, 0), 0),
                ready=ready,
                log_path=Path(info["stdout_logfile"]),
            )
        )
    return found


def readiness(url: str) -> str:
    """What a service's readiness URL answers, in a few words: the gateway's says how many
    events wait in its spool; the API's whether it serves a model."""
    try:
        answer = httpx.get(url, timeout=5)
    except httpx.HTTPError as error:
        return f"not answering ({type(error).__name__})"
    body = _json(answer)
    if answer.is_success and "pending_events" in body:  # the gateway
        return (
            f"ready, {body['pending_events']} events spooled for Prefect, "
            f"{body.get('unconfirmed_events', 0)} unconfirmed"
        )
    if "status" in body and "detail" in body:  # the API's /readyz (503 while it has no model)
        serving = f", serving v{body['model_version']}" if body.get("model_version") else ""
        return f"{body['status']}{serving}: {body['detail']}"[:120]
    return "ready" if answer.is_success else f"not ready ({answer.status_code})"


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def follow(path: Path, *, poll: float = 0.5) -> Iterator[str]:
    """The lines written to ``path`` from now on (this call, not the first ``next``), across
    supervisord's log rotation."""
    position = path.stat().st_size if path.exists() else 0
    identity = path.stat().st_ino if path.exists() else None
    return _new_lines(path, position=position, identity=identity, poll=poll)


def _new_lines(path: Path, *, position: int, identity: int | None, poll: float) -> Iterator[str]:
    while True:
        if path.exists():
            now = path.stat()
            if now.st_ino != identity or now.st_size < position:  # rotated: a new file
                identity, position = now.st_ino, 0
            if now.st_size > position:
                with path.open("rb") as log:
                    log.seek(position)
                    chunk = log.read()
                position += len(chunk)
                yield from chunk.decode(errors="replace").splitlines()
        time.sleep(poll)
