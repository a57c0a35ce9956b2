"""The reconcile flow's choices and their defaults, shared by the flow's signature and
:func:`pipelines.reconcile.reconcile`, apart from that module so that declaring the flow imports
neither MLflow nor the lakeFS SDK (see flows/__init__.py)."""

from __future__ import annotations

from typing import Literal

Mode = Literal["newest", "all"]
DEFAULT_DEPTH = 100
"""Commits of the production branch's log examined (ingest-branch commits included in the count:
with write-audit-publish, about half of them are the branch's own)."""
DEFAULT_MIN_AGE_MINUTES = 15.0
"""Commits younger than this are left to their webhook."""
