"""``python -m api``: serve the prediction API on the configured address."""

from __future__ import annotations

from api.app import create_app
from lakeloop.serving import serve
from lakeloop.settings import load_settings


def main() -> None:
    settings = load_settings()
    serve(create_app(settings), host=settings.api.host, port=settings.api.port)


if __name__ == "__main__":
    main()
