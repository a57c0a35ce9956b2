"""A lakeFS-compatible local server for machines where no lakeFS binary can run.

It speaks the subset of lakeFS's REST API (``/api/v1``) that the official ``lakefs`` SDK uses,
builds every response from the SDK's own models, keeps its data in a folder (SQLite metadata,
content-addressed objects) and fires lakeFS Actions webhooks from ``_lakefs_actions/`` files.
"""

from __future__ import annotations

from lakefs_local.server import create_app

__all__ = ["create_app"]
