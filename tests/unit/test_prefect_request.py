"""Calls to a busy Prefect server are asked again, as Prefect's own client does; other answers
are returned at once. A real HTTP server on loopback answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lakeloop.loop import prefect_request


class Scripted(BaseHTTPRequestHandler):
    answers: list[int] = []
    seen: list[str] = []

    def do_POST(self) -> None:
        self.seen.append(self.path)
        status = self.answers.pop(0) if self.answers else 200
        body = b'{"id": "run"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Scripted.answers, Scripted.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_busy_server_is_asked_again_until_it_answers(server: str) -> None:
    Scripted.answers = [503, 503, 429]

    response = prefect_request("POST", f"{server}/create_flow_run", json={}, timeout=5)

    assert response.status_code == 200
    assert len(Scripted.seen) == 4


@pytest.mark.parametrize("status", [404, 409, 422, 500])
def test_other_answers_are_returned_at_once(server: str, status: int) -> None:
    Scripted.answers = [status]

    response = prefect_request("POST", f"{server}/create_flow_run", json={}, timeout=5)

    assert response.status_code == status
    assert len(Scripted.seen) == 1
