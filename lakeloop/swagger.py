"""The Swagger UI page of lakeloop's HTTP services (the API, the gateway), served wholly by the
service itself so that it works on a machine with no internet.

Litestar's Swagger page loads Swagger UI's script, styles and favicon from a CDN: offline (a
company network, an air-gapped host) it stays blank. Here they come from the swagger-ui-dist
build that the `flask-swagger-ui` wheel ships (its version is Swagger UI's own), served under
``/schema/swagger-ui/``. The package is located, not imported: importing it would load Flask
into a service for nothing.

A service serves the page with both halves: ``render_plugins=[swagger_page()]`` in its
``OpenAPIConfig(path=SCHEMA_PATH, ...)`` and the :func:`swagger_assets` route among its handlers.
It lives in the core because the services may not import one another; no core module imports it,
so the core's domain does not depend on Litestar.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from litestar import Router
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

SCHEMA_PATH = "/schema"
"""Where a service serves its OpenAPI document (``openapi.json``) and its Swagger page."""
ASSETS_PATH = f"{SCHEMA_PATH}/swagger-ui"
"""Where a service serves Swagger UI's files."""

_DIST_PACKAGE = "flask_swagger_ui"


def swagger_ui_files() -> Path:
    """The folder of swagger-ui-dist files (``swagger-ui-bundle.js``, ``swagger-ui.css``, ...)."""
    found = importlib.util.find_spec(_DIST_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(
            "Swagger UI's files are missing: the `flask-swagger-ui` package ships them; "
            "install lakeloop's dependencies (`make install` or `pip install -e .`)"
        )
    return Path(next(iter(found.submodule_search_locations))) / "dist"


def swagger_page(*, assets_path: str = ASSETS_PATH) -> SwaggerRenderPlugin:
    """Litestar's Swagger page, pointed at the files :func:`swagger_assets` serves."""
    return SwaggerRenderPlugin(
        js_url=f"{assets_path}/swagger-ui-bundle.js",
        css_url=f"{assets_path}/swagger-ui.css",
        standalone_preset_js_url=f"{assets_path}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{assets_path}/favicon-32x32.png'>",
    )


def swagger_assets(*, assets_path: str = ASSETS_PATH) -> Router:
    """The route serving Swagger UI's files (kept out of the OpenAPI document)."""
    return create_static_files_router(
        path=assets_path,
        directories=[swagger_ui_files()],
        name="swagger-ui",
        include_in_schema=False,
    )
