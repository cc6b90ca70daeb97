"""Identifiers: UUIDv7 (RFC 9562) for event and passage ids.

Owns id generation. Invariant: ids from one process sort by creation time to the
millisecond and never repeat (74 random bits below the timestamp); they are strings in the
canonical 8-4-4-4-12 form, so consumers can de-duplicate on them as plain text.
"""

from __future__ import annotations

import os
import time
import uuid


def uuid7(now_ms: int | None = None) -> str:
    """A new UUIDv7: 48-bit Unix milliseconds, version 7, variant 10, 74 random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68 & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
