"""A lakeFS-compatible local server for machines where no lakeFS binary can run.

It speaks the subset of lakeFS's REST API (``/api/v1``) that the official ``lakefs`` SDK uses,
builds every response from the SDK's own models, keeps its data in a folder (SQLite metadata,
content-addressed objects; or, with an S3 block store configured, the bytes of ``s3://``
repositories in the bucket, reached by the SDK through lakeFS's presigned staging path) and fires
lakeFS Actions webhooks from ``_lakefs_actions/`` files. Its behaviour follows lakeFS's source;
where it differs on purpose is listed in ``docs/lakefs-compatibility.md``.
"""

from __future__ import annotations

from lakefs_local.server import create_app

__all__ = ["create_app"]
