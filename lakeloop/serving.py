"""How every lakeloop HTTP process starts: one log format, uvicorn on the configured address."""

from __future__ import annotations

import logging
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Process-wide logging for a server entry point (never called at import)."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def serve(app: Any, *, host: str, port: int, level: str = "INFO", access_log: bool = True) -> None:
    """Run an ASGI app until the process is told to stop."""
    import uvicorn  # noqa: PLC0415 - only server processes need it

    configure_logging(level)
    uvicorn.run(app, host=host, port=port, log_level=level.lower(), access_log=access_log)
