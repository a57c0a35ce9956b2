"""``python -m api.openapi``: write the API's OpenAPI document to ``api/openapi.json``.

The document is a build artefact committed with the code; a unit test fails when it drifts.
It is generated for the shipped dataset description and the default settings.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from lakeloop.settings import ApiSettings, load_settings

COMMITTED = Path(__file__).with_name("openapi.json")
REGENERATE = "python -m api.openapi"


def generate() -> dict[str, Any]:
    """The OpenAPI document of the app for the shipped dataset and default API limits."""
    from litestar.testing import TestClient  # noqa: PLC0415 - only needed to generate

    from api.app import create_app  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as scratch:
        settings = load_settings(
            state_dir=Path(scratch),
            dataset=None,
            api=ApiSettings(admin_token="x" * 32, log_predictions=False).model_dump(),  # type: ignore[arg-type]
        )
        # Exactly what the running app serves at /schema/openapi.json.
        with TestClient(create_app(settings, follow_registry=False)) as client:
            response = client.get("/schema/openapi.json")
            response.raise_for_status()
            document: dict[str, Any] = response.json()
    return document


def render(document: dict[str, Any]) -> str:
    """Stable text: sorted keys, two-space indent, final newline (diffs stay readable)."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    COMMITTED.write_text(render(generate()))
    print(f"wrote {COMMITTED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
