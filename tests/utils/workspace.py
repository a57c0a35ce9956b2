"""A scratch lakeloop workspace for end-to-end tests: its own state folder and free ports, and the
`lakeloop` command run in it as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lakeloop.settings import Settings, load_settings
from tests.utils.net import free_port

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
