"""``python -m gateway``: serve the gateway on the configured loopback address."""

from __future__ import annotations

from gateway.app import create_gateway
from lakeloop.serving import serve
from lakeloop.settings import load_settings


def main() -> None:
    """Serve the gateway on the configured loopback address."""
    settings = load_settings()
    serve(create_gateway(settings), host=settings.gateway.host, port=settings.gateway.port)


if __name__ == "__main__":
    main()
