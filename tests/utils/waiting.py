"""Waiting for a condition, never for a fixed time: a loaded machine is slow, not wrong.

The one place tests wait. ``eventually`` waits for a condition to hold; ``eventually_value``
waits for a read to give something and returns it. Both fail the test naming what was awaited
once a generous deadline passed; neither says how long the wait took, since a duration is a
benchmark's business, not a test's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

DEADLINE_SECONDS = 60.0
"""Generous: only a broken system takes this long, however loaded the machine."""

INTERVAL_SECONDS = 0.05
"""Between two checks: short, so a test goes on as soon as its condition holds."""


def eventually(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float = DEADLINE_SECONDS,
    interval: float = INTERVAL_SECONDS,
) -> None:
    """Return as soon as ``check()`` holds; fail naming ``what`` once ``timeout`` passed. A check
    that asks a server something costly can be spaced out with ``interval`` seconds."""
    eventually_value(check, what=what, timeout=timeout, interval=interval)


def eventually_value(
    read: Callable[[], T | None],
    *,
    what: str,
    timeout: float = DEADLINE_SECONDS,
    interval: float = INTERVAL_SECONDS,
    tolerate: tuple[type[Exception], ...] = (),
) -> T:
    """The first truthy value ``read()`` returns; fail naming ``what`` once ``timeout`` passed.

    ``read`` may raise one of ``tolerate`` meanwhile (a server still starting, a series not
    there yet): that counts as not yet, and the last such error is named if the wait fails."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if value := read():
                return value
        except tolerate as error:
            last = error
        if time.monotonic() > deadline:
            suffix = f" (last error: {last!r})" if last is not None else ""
            pytest.fail(f"not within {timeout:.0f} s: {what}{suffix}")
        time.sleep(interval)
