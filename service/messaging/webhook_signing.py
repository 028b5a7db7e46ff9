"""Standard Webhooks signatures and the retry schedule: pure functions, no I/O.

The signature is what receivers check with the ``standardwebhooks`` package (or three lines of
their own, docs/webhooks.md): ``v1,`` and the base64 HMAC-SHA256, keyed with the bytes after
``whsec_``, of ``{webhook-id}.{webhook-timestamp}.{body}``. The timestamp is the time of the
attempt (receivers refuse old ones to stop replays); the id and the body are the same on every
attempt, so receivers deduplicate by id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid


def webhook_id(delivery_id: uuid.UUID) -> str:
    """The ``webhook-id`` of a delivery (one event to one endpoint), the same on every attempt."""
    return f"msg_{delivery_id.hex}"


def sign(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, msg_id=msg_id, timestamp=timestamp, body=body),
    }


def retry_delay(attempts: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 for the first).

    Exponential (``base``, doubling, at most ``cap``) with "equal jitter": a random share of the
    second half, given as ``jitter`` in [0, 1), so replicas that failed together do not retry
    together, yet never sooner than half the step.
    """
    step = min(cap, base * 2.0 ** min(max(attempts, 1) - 1, 62))
    return step / 2 + step / 2 * jitter


def gives_up(*, age_seconds: float, window_seconds: float) -> bool:
    """After a failed attempt: stop retrying only once the event is older than the window, so
    every event is retried for at least the window (24 h by default)."""
    return age_seconds >= window_seconds


def schedule(*, base: float, cap: float, window: float) -> list[float]:
    """The attempt times (seconds after the event) without jitter at its latest: for the docs
    and the test that the schedule covers the window."""
    times, at, attempts = [0.0], 0.0, 0
    while not gives_up(age_seconds=at, window_seconds=window):
        attempts += 1
        at += retry_delay(attempts, base=base, cap=cap, jitter=0.999999)
        times.append(at)
    return times
