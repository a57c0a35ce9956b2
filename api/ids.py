"""Prediction ids: UUIDv7 strings (RFC 9562), so they sort by the time they were made."""

from __future__ import annotations

import os
import time

_VERSION_7 = 0x7000
_VARIANT = 0b10 << 62
# The counter part leaves room for a whole batch without overflowing into the variant bits.
_COUNTER_MASK = (1 << 61) - 1


def prediction_ids(count: int) -> list[str]:
    """``count`` time-ordered ids; within one call they are consecutive (monotonic)."""
    millis = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")
    high = (millis & 0xFFFF_FFFF_FFFF) << 16 | _VERSION_7 | (random >> 68 & 0xFFF)
    start = random & _COUNTER_MASK
    head = f"{high:016x}"
    # Only the low 64 bits change within a call: format the fixed part once.
    prefix = f"{head[:8]}-{head[8:12]}-{head[12:16]}-"
    ids = []
    for offset in range(count):
        low = f"{_VARIANT | (start + offset):016x}"
        ids.append(f"{prefix}{low[:4]}-{low[4:]}")
    return ids
