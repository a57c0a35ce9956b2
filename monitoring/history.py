"""The record of one monitor run, as the monitor history stores it and the policy reads it."""

from __future__ import annotations

from datetime import datetime

import msgspec

from monitoring.parse import DriftSummary, QualitySummary


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The policy's answer, with the reason a person reads in the history and the event."""

    retrain: bool
    reason: str


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """Which predictions a monitor run looked at (by time, by count, or both)."""

    id: str
    """Natural key of the window (also in the drift event's id), e.g. ``2024-05-01T10:00/1h``."""
    start: datetime | None = None
    end: datetime | None = None
    rows: int = 0


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One monitor run: one object under ``history/`` in the monitoring store."""

    time: datetime
    """When the run decided (timezone-aware)."""
    champion_version: str
    window: Window
    drift: DriftSummary
    quality: QualitySummary | None
    decision: Decision
    report_path: str | None = None
    """Where the Evidently HTML report was saved."""
    event_id: str | None = None
    """Id of the drift event, when one was emitted."""
