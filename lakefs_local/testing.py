"""Helpers to run the local server in tests and benchmarks: a thread, a subprocess, a receiver.

Shipped with the package (not under ``tests/``) because the conformance suite, the server's own
unit tests and ``benchmarks/lakefs_io.py`` all start servers the same way.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from lakefs_local.__main__ import KEY_ID_ENV, SECRET_ENV
from lakefs_local.blockstore import S3Settings
from lakefs_local.server import API_PREFIX, create_app

if TYPE_CHECKING:
    import uvicorn
    from litestar import Litestar

TEST_KEY_ID = "AKIALAKELOOPTEST"
TEST_SECRET = "local-test-secret-0123456789"  # noqa: S105 (a throwaway test credential)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, *, timeout: float = 15.0) -> None:
    """Poll ``/healthcheck`` until it answers 204; raise TimeoutError naming the URL."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}{API_PREFIX}/healthcheck", timeout=1) as response:  # noqa: S310
                if response.status == 204:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"lakefs_local at {url} did not become healthy in {timeout}s")
        time.sleep(0.05)


@dataclass
class LocalServerThread:
    """The server in a background thread of this process (fast to start, for SDK-level tests)."""

    data_dir: Path
    key_id: str = TEST_KEY_ID
    secret: str = TEST_SECRET
    port: int = field(default_factory=free_port)
    blockstore_s3: S3Settings | None = None
    """Serve ``s3://`` repositories from S3 (presigned URLs included); None: local only."""
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _app: Litestar | None = None

    @property
    def url(self) -> str:
        """Base URL (without ``/api/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalServerThread:
        """Start serving and wait until the socket accepts requests."""
        import uvicorn  # noqa: PLC0415 - only needed when a server actually starts

        app = create_app(
            data_dir=self.data_dir,
            access_key_id=self.key_id,
            secret_access_key=self.secret,
            blockstore_s3=self.blockstore_s3,
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._app = app
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("lakefs_local server thread did not start")
            time.sleep(0.01)
        return self

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until the post-* hooks fired so far have finished, so a test can check what
        they did (or that they did nothing) without guessing how long they take."""
        if self._app is None:
            raise RuntimeError("the server is not running")
        self._app.state.service.actions.wait_idle(timeout)

    def stop(self) -> None:
        """Stop serving; a second call does nothing."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = self._app = None


@dataclass
class LocalServerProcess:
    """``python -m lakefs_local`` as a real subprocess (crash tests, benchmarks)."""

    data_dir: Path
    key_id: str = TEST_KEY_ID
    secret: str = TEST_SECRET
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL (without ``/api/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalServerProcess:
        """Spawn the server and wait for its health check."""
        env = {**os.environ, KEY_ID_ENV: self.key_id, SECRET_ENV: self.secret, **self.extra_env}
        command = [sys.executable, "-m", "lakefs_local", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), "--log-level", "WARNING"]
        log_file = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(command, env=env, stdout=log_file, stderr=log_file)
        try:
            wait_healthy(self.url)
        except TimeoutError:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushing; what a crash looks like."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait (a clean shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def peak_rss_kib(self) -> int | None:
        """The process's peak resident memory (VmHWM), while it runs."""
        if self.process is None:
            return None
        status = Path(f"/proc/{self.process.pid}/status")
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return None


class WebhookCall(TypedDict):
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    json: Any  # the body as the server under test sent it (lakeFS's EventInfo, unchecked)


HOLD_LIMIT_SECONDS = 300.0
"""Longest a :class:`WebhookReceiver` holds an answer back (a test that forgot to let go)."""


class WebhookReceiver:
    """A tiny webhook endpoint: records each POST and answers with a configurable status.

    ``host`` is where it binds and how it names itself in ``url``: a real lakeFS in a container
    must reach it, so callers pass a routable host (``LAKEFS_WEBHOOK_HOST``) in that case.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.calls: list[WebhookCall] = []
        self.status = 200
        self.reply = b"ok"
        self.answering = threading.Event()
        """Set: answer at once. Cleared: hold every answer until it is set again (at most
        ``HOLD_LIMIT_SECONDS``), to show a caller gave up on its own timeout."""
        self.answering.set()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.calls.append(
                    {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
                )
                receiver.answering.wait(HOLD_LIMIT_SECONDS)
                try:
                    self.send_response(receiver.status)
                    self.send_header("content-length", str(len(receiver.reply)))
                    self.end_headers()
                    self.wfile.write(receiver.reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller timed out and left: that is what a slow hook test wants

            def log_message(self, *args: object) -> None:
                """Keep test output quiet."""

        bind = "0.0.0.0" if host not in {"127.0.0.1", "localhost"} else host  # noqa: S104
        self.httpd = http.server.ThreadingHTTPServer((bind, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[WebhookCall]:
        """Wait until ``count`` calls arrived (or the timeout passed); return all calls."""
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.calls

    def close(self) -> None:
        """Stop listening."""
        self.httpd.shutdown()
        self.httpd.server_close()
