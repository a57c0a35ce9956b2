"""One monitor step (``monitoring.check.check_window``) on a window of the test champion, v1 of
``housing-price``, as the monitor flow runs it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

from lakeloop.dataset import DatasetSpec
from lakeloop.settings import DriftPolicy
from lakeloop.stores.objects import ObjectStore
from monitoring.check import CheckResult, check_window
from monitoring.history import Window


def check(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    spec: DatasetSpec,
    store: ObjectStore,
    window_id: str,
    now: datetime,
    policy: DriftPolicy,
    baseline: dict[str, float] | None = None,
    **extra: Any,
) -> CheckResult:
    """Check ``current`` (champion v1's predictions) against ``reference``, writing the report
    and the history to ``store``."""
    return check_window(
        current=current,
        reference=reference,
        spec=spec,
        window=Window(id=window_id, rows=len(current)),
        champion_version="1",
        model_name="housing-price",
        store=store,
        now=now,
        policy=policy,
        baseline_quality=baseline,
        **extra,
    )
