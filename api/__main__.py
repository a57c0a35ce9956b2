"""``python -m api``: serve the prediction API on the configured address."""

from __future__ import annotations

import logging

import uvicorn

from api.app import create_app
from lakeloop.settings import load_settings


def main() -> None:
    settings = load_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(create_app(settings), host=settings.api.host, port=settings.api.port)


if __name__ == "__main__":
    main()
