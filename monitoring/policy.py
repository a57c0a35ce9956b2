"""Decide: a pure policy saying whether a monitor run should ask for a retrain.

It fires only when a trigger holds on enough rows (drift share, or the error increase over the
champion's holdout error), no retrain for the same champion is running, and the cooldown since
the last retrain decision, for any champion, has passed: a shift that outlives one retrain must
not start a storm of them while the first is still training.
"""

from __future__ import annotations

from datetime import datetime

from lakeloop.dataset import in_units
from lakeloop.settings import DriftPolicy
from monitoring.history import Decision, HistoryEntry
from monitoring.parse import DriftSummary, QualitySummary

__all__ = ["Decision", "decide", "last_retrain", "mae_increase"]


def decide(
    *,
    drift: DriftSummary,
    quality: QualitySummary | None,
    baseline_quality: dict[str, float] | None,
    history: list[HistoryEntry],
    now: datetime,
    policy: DriftPolicy,
    champion_version: str,
    retrain_running: bool,
) -> Decision:
    """Whether to emit the drift event now; ``history`` holds the earlier monitor runs (any order;
    those within ``policy.cooldown`` of ``now`` are the ones that count),
    ``baseline_quality`` the champion's holdout metrics (``{"mae": ...}``)."""
    triggers, quiet = _triggers(drift, quality, baseline_quality, policy)
    if not triggers:
        return Decision(retrain=False, reason="no trigger: " + "; ".join(quiet))
    fired = " and ".join(triggers)
    if retrain_running:
        return Decision(
            retrain=False,
            reason=f"{fired}, but a retrain for champion {champion_version} is already running",
        )
    last = last_retrain(history)
    if last is not None and now - last.time < policy.cooldown:
        return Decision(
            retrain=False,
            reason=(
                f"{fired}, but in cooldown: the last retrain decision was at "
                f"{last.time.isoformat()} (champion {last.champion_version}); next allowed "
                f"after {(last.time + policy.cooldown).isoformat()}"
            ),
        )
    return Decision(retrain=True, reason=fired)


def last_retrain(history: list[HistoryEntry]) -> HistoryEntry | None:
    """The latest history entry that decided to retrain, for any champion."""
    fired = [entry for entry in history if entry.decision.retrain]
    return max(fired, key=lambda entry: entry.time, default=None)


def mae_increase(quality: QualitySummary, baseline_quality: dict[str, float]) -> float | None:
    """Relative MAE increase over the champion's holdout MAE (0.25 = 25 % worse)."""
    baseline = baseline_quality.get("mae")
    if baseline is None or baseline <= 0:
        return None
    return quality.mae / baseline - 1.0


def _triggers(
    drift: DriftSummary,
    quality: QualitySummary | None,
    baseline_quality: dict[str, float] | None,
    policy: DriftPolicy,
) -> tuple[list[str], list[str]]:
    """The triggers that fired on enough rows, and why each other one did not."""
    fired: list[str] = []
    quiet: list[str] = []
    share, threshold = drift.drift_share, policy.drift_share_threshold
    if share < threshold:
        quiet.append(f"drift share {share:.2f} < {threshold:.2f}")
    elif drift.rows_current < policy.min_rows:
        quiet.append(
            f"drift share {share:.2f} >= {threshold:.2f} but the window has only "
            f"{drift.rows_current} rows (< {policy.min_rows})"
        )
    else:
        drifted = ", ".join(drift.drifted_features)
        fired.append(f"drift share {share:.2f} >= {threshold:.2f} ({drifted})")

    _prediction_trigger(drift, policy, fired=fired, quiet=quiet)

    if quality is None:
        quiet.append("no feedback prices for the window")
        return fired, quiet
    increase = mae_increase(quality, baseline_quality) if baseline_quality else None
    if increase is None:
        quiet.append("no champion holdout MAE to compare the window's MAE with")
        return fired, quiet
    limit = policy.mae_increase_threshold
    described = f"MAE {in_units(quality.mae)} is {increase:+.0%} vs the champion's holdout MAE"
    if increase < limit:
        quiet.append(f"{described} (< +{limit:.0%})")
    elif quality.rows < policy.min_rows:
        quiet.append(
            f"{described} (>= +{limit:.0%}) but only {quality.rows} rows have feedback "
            f"(< {policy.min_rows})"
        )
    else:
        fired.append(f"{described} (>= +{limit:.0%})")
    return fired, quiet


def _prediction_trigger(
    drift: DriftSummary, policy: DriftPolicy, *, fired: list[str], quiet: list[str]
) -> None:
    """Prediction drift, when the policy watches it and both windows carried predictions."""
    column = drift.prediction
    if not policy.prediction_drift or column is None:
        return
    described = (
        f"prediction drift ({column.method} {column.score:.3g}, threshold {column.threshold:g})"
    )
    if not column.drifted:
        quiet.append(f"no {described}")
    elif drift.rows_current < policy.min_rows:
        quiet.append(
            f"{described} but the window has only {drift.rows_current} rows (< {policy.min_rows})"
        )
    else:
        fired.append(described)
