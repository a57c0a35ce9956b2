"""Stack start-up: `lakeloop up` from nothing to every service ready, `up` again on the running
stack, and `lakeloop down` until its command returns, in a scratch state folder on free ports.

Each figure is the wall time of the `lakeloop` command a user runs (its Python start-up included).
The first `up` of a fresh folder also creates Prefect's and MLflow's databases; the second cold
`up` (after `down`) is the one a user sees every morning. The built-in lakeFS-compatible server is
used (no download) so the figures compare launchers, not networks.

Run against other code with ``PYTHONPATH=/that/tree python benchmarks/stack.py``: it imports
nothing of lakeloop itself, only runs ``python -m tooling``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVICES = ("lakefs", "mlflow", "prefect", "gateway", "api")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def lakeloop(env: dict[str, str], cwd: Path, *args: str) -> float:
    """Seconds the `lakeloop` command took; fails loudly if it did not succeed."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tooling", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"lakeloop {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr}")
    return took


def scratch_env(state_dir: Path) -> dict[str, str]:
    """This process's environment without lakeloop's, Prefect's and MLflow's settings, plus a
    scratch state folder, the built-in lakeFS (no download) and free ports."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LAKELOOP_", "PREFECT_", "MLFLOW_"))
    }
    env["LAKELOOP_STATE_DIR"] = str(state_dir)
    env["LAKELOOP_LAKEFS__DOWNLOAD"] = "false"
    for name in SERVICES:
        env[f"LAKELOOP_{name.upper()}__PORT"] = str(free_port())
    return env


def stop_stack(env: dict[str, str], cwd: Path) -> None:
    """`lakeloop down`, whatever state a benchmark left the stack in."""
    subprocess.run(
        [sys.executable, "-m", "tooling", "down"],
        env=env,
        cwd=cwd,
        capture_output=True,
        check=False,
        timeout=300,
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-stack-") as scratch:
        root = Path(scratch)
        env = scratch_env(root / "state")
        try:
            first = lakeloop(env, root, "up")
            down_first = lakeloop(env, root, "down")
            cold = lakeloop(env, root, "up")
            # Today's launcher refuses a second `up` (ports in use): its figure is then absent.
            try:
                again: float | None = lakeloop(env, root, "up")
            except SystemExit:
                again = None
            down = lakeloop(env, root, "down")
        finally:
            stop_stack(env, root)
    print(f"{'lakeloop up, fresh state folder':<40}{first:>8.1f} s")
    print(f"{'lakeloop up, cold (after down)':<40}{cold:>8.1f} s")
    shown = f"{again:>8.1f} s" if again is not None else "   refused"
    print(f"{'lakeloop up, stack already running':<40}{shown}")
    print(f"{'lakeloop down':<40}{min(down_first, down):>8.1f} s")


if __name__ == "__main__":
    main()
