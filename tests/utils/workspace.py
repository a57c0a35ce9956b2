"""A scratch lakeloop workspace for end-to-end tests: its own state folder and free ports, and the
`lakeloop` command run in it as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from lakeloop import loop
from lakeloop.settings import Settings, load_settings
from tests.utils.net import free_port
from tests.utils.waiting import eventually

RUN_DEADLINE_SECONDS = 300.0
"""How long a flow run in flight may take to end: a training on a loaded machine."""

LAKELOOP = [sys.executable, "-m", "tooling"]
SERVICES = ("lakefs", "mlflow", "prefect", "gateway", "api")


@dataclass(frozen=True)
class Workspace:
    settings: Settings
    env: dict[str, str]
    ports: dict[str, int]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LAKELOOP, *args],
            env=self.env,
            cwd=self.settings.state_dir.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def processes_of(state_dir: Path) -> str:
    """Every running process whose command line names ``state_dir`` (``pgrep -af``), one per
    line: empty when nothing of that stack is left."""
    found = subprocess.run(
        ["pgrep", "-af", str(state_dir)], capture_output=True, text=True, check=False
    )
    return found.stdout.strip()


def new_workspace(root: Path, **environment: str) -> Workspace:
    """A workspace under ``root`` on free ports; ``environment`` adds ``LAKELOOP_*`` settings
    for every process of its stack (the flows inherit them)."""
    ports = {name: free_port() for name in SERVICES}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LAKELOOP_", "PREFECT_", "MLFLOW_"))
    }
    env["LAKELOOP_STATE_DIR"] = str(root / "state")
    env["COLUMNS"] = "200"  # rich wraps tables to the terminal width
    for name, port in ports.items():
        env[f"LAKELOOP_{name.upper()}__PORT"] = str(port)
    env.update(environment)
    settings = load_settings(
        state_dir=root / "state", **{name: {"port": port} for name, port in ports.items()}
    )
    return Workspace(settings=settings, env=env, ports=ports)


def wait_settled(settings: Settings, *, flow: str) -> None:
    """Wait until the running loop has nothing in flight for ``flow``: the gateway holds no
    event for Prefect (everything relayed was accepted) and no run of ``flow`` is scheduled,
    pending or running. Check that nothing was started only after this, never after a sleep."""
    eventually(
        lambda: (
            httpx.get(f"{settings.gateway.url}/healthz", timeout=5).json()["pending_events"] == 0
        ),
        what="the gateway's spool empty",
    )
    eventually(
        lambda: loop.runs_of_flow(settings, flow, active=True) == [],
        what=f"no run of the {flow} flow in flight",
        timeout=RUN_DEADLINE_SECONDS,
        interval=0.5,
    )
