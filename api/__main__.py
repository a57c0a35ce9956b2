"""``python -m api``: serve the prediction API on the configured address."""

from __future__ import annotations

import os

from api.app import create_app
from lakeloop.serving import serve
from lakeloop.settings import load_settings


def main() -> None:
    """Build the settings, the app, and serve until SIGINT/SIGTERM (which flushes the log)."""
    settings = load_settings()
    # MLflow's client retries a dead server with backoff for minutes by default; the API would
    # then notice an outage (and report it in /readyz) only that late. Fail a check fast instead:
    # the next poll tries again anyway. Explicit settings in the environment win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # No access log: every prediction is already in the prediction log and the metrics, and a
    # line per request would cost a good share of the throughput.
    serve(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        access_log=False,
    )


if __name__ == "__main__":
    main()
