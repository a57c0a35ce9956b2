"""Check reported values before they train: a window whose labels disagree with the champion in
one direction, far beyond its usual error, is held back instead of folded into lakeFS.

Reported values are compared with the champion's own predictions for the same requests, as
ratios: the median of log(actual / predicted) over the window, against the same median on the
champion's holdout when it was trained (its usual bias, ``median_log_ratio`` among its metrics).
A feed that is systematically off by a factor (a currency or unit mix-up, prices joined to the
wrong sales, a deliberate push) moves that median by the factor; a window that drifted because
the world changed moves it too, but less than the tolerance allows for the drift that retraining
is for. What the tolerance lets through is left to the gate, which also judges a model trained on
feedback on the data that predates it (``lakeloop.model``).

The check needs a positive target (a ratio means nothing otherwise); for other targets it says
so and lets the window through to the gate.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime

import msgspec
import pandas as pd

from lakeloop.dataset import DatasetSpec
from lakeloop.model import median_log_ratio
from monitoring.window import REPORTED_AT, REPORTED_BY

UNKNOWN_CLIENT = "unnamed"
"""How provenance names reports logged before clients had names."""


class Provenance(msgspec.Struct, frozen=True):
    """Who reported a window's values, how many, and when."""

    rows: int
    clients: dict[str, int]
    first_reported: datetime | None
    last_reported: datetime | None

    def metadata(self) -> dict[str, str]:
        """As lakeFS commit metadata (text values)."""
        clients = ",".join(f"{name}={count}" for name, count in sorted(self.clients.items()))
        return {
            "lakeloop.feedback.rows": str(self.rows),
            "lakeloop.feedback.clients": clients,
            "lakeloop.feedback.first_reported": _iso(self.first_reported),
            "lakeloop.feedback.last_reported": _iso(self.last_reported),
        }

    def describe(self) -> str:
        clients = ", ".join(f"{name} ({count})" for name, count in sorted(self.clients.items()))
        span = (
            f" from {_iso(self.first_reported)} to {_iso(self.last_reported)}"
            if self.first_reported
            else ""
        )
        return f"{self.rows} values reported by {clients or 'no named client'}{span}"


class LabelCheck(msgspec.Struct, frozen=True):
    """The verdict on a window's reported values."""

    passed: bool
    reason: str
    rows: int
    factor: float | None = None
    """exp(window's median log ratio minus the champion's holdout median): how far the reported
    values sit from the predictions, against the champion's usual bias (1.0 = as usual)."""
    tolerance: float | None = None


class FoldRecord(msgspec.Struct, frozen=True):
    """What a retrain did with one window's reported values (``lakeloop report`` lists them)."""

    time: datetime
    champion_version: str
    window_id: str
    folded: bool
    reason: str
    check: LabelCheck | None = None
    provenance: Provenance | None = None
    commit_id: str = ""
    """The lakeFS commit that carries them, when folded."""
    held_at: str = ""
    """Where the rows held back are, when the check refused them."""

    def describe(self) -> str:
        """One line a person reads: when, whose window, who reported, the verdict and why."""
        verdict = f"folded in {self.commit_id[:12]}" if self.folded else "NOT FOLDED"
        who = f" ({self.provenance.describe()})" if self.provenance else ""
        # The check's words, unless it passed and something else kept the prices out (the
        # pre-merge data checks): then the note says what.
        checked = self.check is not None and (self.folded or not self.check.passed)
        why = self.check.reason if checked and self.check else self.reason
        return (
            f"{self.time:%Y-%m-%d %H:%M:%S} feedback of v{self.champion_version} "
            f"window={self.window_id}{who} {verdict}: {why}"
        )


def provenance(reports: pd.DataFrame) -> Provenance:
    """Who reported the rows of ``reports`` (a :func:`monitoring.window.window_reports` frame)."""
    clients = Counter(
        UNKNOWN_CLIENT if pd.isna(name) else str(name)
        for name in reports.get(REPORTED_BY, pd.Series([None] * len(reports)))
    )
    times = reports[REPORTED_AT].dropna() if REPORTED_AT in reports else pd.Series([])
    return Provenance(
        rows=len(reports),
        clients=dict(clients),
        first_reported=times.min().to_pydatetime() if len(times) else None,
        last_reported=times.max().to_pydatetime() if len(times) else None,
    )


def check_labels(
    reports: pd.DataFrame,
    spec: DatasetSpec,
    *,
    holdout_bias: float | None,
    tolerance: float,
    min_rows: int,
) -> LabelCheck:
    """Whether the reported values of ``reports`` (the target column, beside the champion's
    ``prediction``) may train: not when their median ratio to the predictions differs from the
    champion's holdout bias (``holdout_bias``, a median log ratio; ``None`` for a champion
    trained before it was recorded, taken as unbiased) by more than a factor of ``tolerance``
    either way. Windows of fewer than ``min_rows`` values are too small to judge and pass."""
    rows = len(reports)
    if rows < min_rows:
        return LabelCheck(
            passed=True,
            reason=f"{rows} reported values: too few to compare with the predictions "
            f"(at least {min_rows})",
            rows=rows,
        )
    window_bias = median_log_ratio(
        reports[spec.target.name].to_numpy(), reports["prediction"].to_numpy()
    )
    if window_bias is None:
        return LabelCheck(
            passed=True,
            reason=f"{spec.target.name} is not always positive: the reported values cannot be "
            "compared with the predictions as ratios (the gate still judges the model)",
            rows=rows,
        )
    factor = math.exp(window_bias - (holdout_bias or 0.0))
    usual = "" if holdout_bias is not None else " (the champion recorded no holdout bias)"
    shifted = max(factor, 1 / factor) > tolerance
    direction = "above" if factor > 1 else "below"
    reason = (
        f"the {rows} reported values sit {_times(factor)} {direction} the champion's predictions "
        f"against its holdout{usual}: "
        + (
            f"beyond the tolerance of {_times(tolerance)}; a systematic shift like this is more "
            "likely a broken feed than a market move, so the window is not folded"
            if shifted
            else f"within the tolerance of {_times(tolerance)}"
        )
    )
    return LabelCheck(
        passed=not shifted,
        reason=reason,
        rows=rows,
        factor=factor,
        tolerance=tolerance,
    )


def _times(factor: float) -> str:
    return f"x{max(factor, 1 / factor):.2f}"


def _iso(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when is not None else ""
