"""A flow served the way ``deployments.serve`` serves lakeloop's flows (each run forked from the
warm process, :mod:`deployments.warm`), for tests that watch runs crash, wait and overlap: run
``python -m tests.utils.forked_flows LIMIT`` beside a Prefect server.

Each run writes ``<folder>/<name>.started``: the process it ran in and whether it began warm:
Great Expectations already imported and MLflow's distribution map already built
(:mod:`deployments.warm_caches`; a new interpreter would have neither); then it waits until
``<folder>/<name>.go`` exists; with ``crash`` it SIGKILLs its own process instead, as the OOM
killer would."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from mlflow.utils import requirements_utils
from prefect import flow, get_run_logger

from deployments.serve import Declared, serve_forked

FLOW = "forked-witness"
DEPLOYMENT = "witness"
WAIT_SECONDS = 300.0
"""Longest a run waits for its go file: only a broken test leaves it waiting."""


@flow(name=FLOW, retries=0)
def witness(name: str, folder: str, crash: bool = False) -> str:
    """Say where it runs, then wait for the test's go, or kill its own process."""
    logger = get_run_logger()
    # Read here, not through deployments.warm_caches: importing that module fills the map.
    built = getattr(requirements_utils, "_MODULES_TO_PACKAGES", None) is not None
    warm = "great_expectations" in sys.modules and built
    logger.info("witness %s: pid %d, parent %d, warm %s", name, os.getpid(), os.getppid(), warm)
    Path(folder, f"{name}.started").write_text(f"{os.getpid()} {warm}")
    if crash:
        os.kill(os.getpid(), signal.SIGKILL)
    go = Path(folder, f"{name}.go")
    deadline = time.monotonic() + WAIT_SECONDS
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    logger.info("witness %s: done", name)
    return name


def main() -> None:
    declared = Declared(
        name=DEPLOYMENT,
        flow=witness,
        entrypoint="tests/utils/forked_flows.py:witness",
        description="A test's witness run.",
    )
    serve_forked([declared], limit=int(sys.argv[1]))


if __name__ == "__main__":
    main()
