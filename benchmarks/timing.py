"""Timing shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(run: Callable[[], object], *, repeats: int = 3) -> float:
    """Fastest of ``repeats`` runs, in seconds (the least disturbed by the rest of the machine)."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)
