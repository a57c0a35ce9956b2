"""What a service's Swagger page loads, checked without a browser: every file is its own."""

from __future__ import annotations

import re
from pathlib import Path

from litestar.testing import TestClient

_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def assert_swagger_page_loads_only_its_own_files(client: TestClient) -> None:
    """No CDN: every script, style and icon of ``client``'s Swagger page is served by the service
    itself, with the type a browser insists on (tests/integration/test_pages_offline.py opens
    the pages in a browser cut off from everything but loopback)."""
    page = client.get("/schema/swagger").text
    linked = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
    assert len(linked) == 4, linked  # the bundle, the standalone preset, the styles, the icon
    for url in linked:
        assert url.startswith("/schema/swagger-ui/"), url
        answer = client.get(url)
        assert answer.status_code == 200, url
        assert answer.headers["content-type"].startswith(_CONTENT_TYPES[Path(url).suffix]), url
        assert len(answer.content) > 500, url
    assert client.get("/schema/swagger-ui/../../pyproject.toml").status_code == 404
