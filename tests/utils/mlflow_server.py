"""The local stack's MLflow server for integration tests: started on the settings' port and state
folder exactly as `lakeloop up` starts it, and killable (SIGKILL) and startable again on the same
database and artifacts."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from lakeloop.settings import Settings
from tooling.stack import Running, Stack, services


class MlflowServer:
    """The local stack's MLflow server, which a test can kill and start again on the same store."""

    def __init__(self, settings: Settings) -> None:
        self.stack = Stack(settings)
        [self.service] = [s for s in services(settings) if s.name == "mlflow"]
        self.running: Running | None = None

    def start(self) -> None:
        """Start the server and wait until it answers its health check."""
        self.running = self.stack.start(self.service)
        self.stack.wait(self.running)

    def kill(self) -> None:
        """SIGKILL the server's whole process group, as a crash or an OOM kill would."""
        assert self.running is not None
        os.killpg(self.running.process.pid, signal.SIGKILL)
        self.running.process.wait()
        self.stack.running.remove(self.running)  # never signal that pid (group) again
        self.running = None

    def stop(self) -> None:
        """Stop whatever this object started (the server, if it runs)."""
        self.stack.down()
        self.running = None


@contextmanager
def mlflow_server(settings: Settings) -> Iterator[MlflowServer]:
    """A running MLflow server for ``settings`` (its port, its state folder), stopped on exit."""
    server = MlflowServer(settings)
    try:
        server.start()
        yield server
    finally:
        server.stop()
