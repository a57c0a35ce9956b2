"""Waiting for a condition, never for a fixed time: a loaded machine is slow, not wrong."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

DEADLINE_SECONDS = 60.0
"""Generous: only a broken system takes this long, however loaded the machine."""


def eventually(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float = DEADLINE_SECONDS,
    interval: float = 0.05,
) -> None:
    """Return as soon as ``check()`` holds; fail naming ``what`` once ``timeout`` passed. A check
    that asks a server something costly can be spaced out with ``interval`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)
