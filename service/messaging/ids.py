"""Time-ordered UUIDv7 message ids (RFC 9562), so ids sort the way messages were created."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_BITS = 12  # rand_a holds a per-millisecond counter (RFC 9562 section 6.2, method 1)


def uuid7_at(ms: int) -> uuid.UUID:
    """A UUIDv7 for the given Unix millisecond, monotonic within this process."""
    global _last_ms, _counter  # noqa: PLW0603 - one generator per process is the point
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter >= 1 << _COUNTER_BITS:
                # Counter exhausted in this millisecond: borrow the next one, still monotonic.
                ms += 1
                _counter = 0
        else:
            _counter = int.from_bytes(os.urandom(2)) & 0x3FF  # leave room to count up
        _last_ms = ms
        counter = _counter
    rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand_b
    return uuid.UUID(int=value)


def new_message_id() -> tuple[uuid.UUID, datetime]:
    """An id and the creation time it encodes, read from one clock reading."""
    now_ns = time.time_ns()
    created_at = datetime.fromtimestamp(now_ns / 1e9, tz=UTC)
    message_id = uuid7_at(now_ns // 1_000_000)
    return message_id, created_at


def uuid7_ms(value: uuid.UUID) -> int:
    """The Unix millisecond a UUIDv7 was made at."""
    return value.int >> 80
