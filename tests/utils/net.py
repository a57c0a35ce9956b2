"""Loopback helpers for tests that run real servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.utils.waiting import eventually


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve_in_thread(app: Any, *, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app with uvicorn on loopback in a thread; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def started() -> bool:
        if not thread.is_alive():  # the port taken, the app failing its start-up: say so now
            raise RuntimeError(f"the test server on {url} stopped while starting")
        return bool(server.started)

    eventually(started, what=f"the test server on {url} started")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
