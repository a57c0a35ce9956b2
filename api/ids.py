"""Prediction ids: UUIDv7 strings (RFC 9562), so they sort by the time they were made."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime

import numpy as np

_VERSION_7 = 0x7000
_VARIANT = 0b10 << 62
# The counter part leaves room for a whole batch without overflowing into the variant bits.
_COUNTER_MASK = (1 << 61) - 1
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Below this many ids, formatting them one by one is cheaper than setting up the arrays.
_ONE_BY_ONE = 16
UUID7_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
"""A prediction id as this API writes them: lowercase, version 7, RFC 9562 variant."""
_UUID7 = re.compile(UUID7_PATTERN)
# The latest time a datetime holds; an id stamped later (its 48 bits reach year 10889) is read as
# this, which is as much "in the future" for every check.
_LATEST_MS = int(datetime(9999, 12, 31, tzinfo=UTC).timestamp() * 1000)


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


def made_at(prediction_id: str) -> datetime:
    """When a prediction id was made: its first 48 bits, Unix milliseconds (UTC). ``ValueError``
    when it is not a well-formed UUIDv7."""
    if not _UUID7.fullmatch(prediction_id):
        raise ValueError(f"{prediction_id!r} is not a UUIDv7")
    millis = int(prediction_id[:8] + prediction_id[9:13], 16)
    return datetime.fromtimestamp(min(millis, _LATEST_MS) / 1000, tz=UTC)


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
