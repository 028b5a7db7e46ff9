"""What a bench run counts: acks, deliveries per device, latencies, losses and duplicates.

Pure bookkeeping with no I/O and no clock of its own (callers pass nanosecond timestamps), so the
rules that decide whether a run was correct (nothing lost, nothing twice) are tested directly.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

RESULT_SCHEMA = "messaging-bench/1"
_NS_PER_US = 1_000
_US_PER_MS = 1_000.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the value at rank ceil(q/100 * n)); NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(q / 100 * n))
    return float(sorted_values[rank - 1])


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of_microseconds(cls, values: Iterable[int]) -> LatencySummary:
        ordered = sorted(values)
        if not ordered:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            count=len(ordered),
            p50_ms=percentile(ordered, 50) / _US_PER_MS,
            p95_ms=percentile(ordered, 95) / _US_PER_MS,
            p99_ms=percentile(ordered, 99) / _US_PER_MS,
            max_ms=ordered[-1] / _US_PER_MS,
            mean_ms=sum(ordered) / len(ordered) / _US_PER_MS,
        )

    def as_json(self) -> dict[str, Any]:
        def clean(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 3)

        return {
            "count": self.count,
            "p50": clean(self.p50_ms),
            "p95": clean(self.p95_ms),
            "p99": clean(self.p99_ms),
            "max": clean(self.max_ms),
            "mean": clean(self.mean_ms),
        }


class _Flight:
    """One sent message: when, which devices still owe a delivery, and how it was answered."""

    __slots__ = ("answer", "expected", "pending", "sent_ns")

    def __init__(self, sent_ns: int, expected: frozenset[int]) -> None:
        self.sent_ns = sent_ns
        self.expected = expected
        self.pending = set(expected)
        self.answer = _IN_FLIGHT


_IN_FLIGHT = 0
_ACKED = 1
_FAILED = 2
_TIMED_OUT = 3  # no ack in time: counted as an error, but its deliveries are still legitimate
TIMEOUT_CODE = "TIMEOUT"


@dataclass
class Tally:
    """Counters and raw latencies of one worker; tallies of several workers merge by addition."""

    sent: int = 0
    acked: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    unanswered: int = 0
    delivered: int = 0
    expected_deliveries: int = 0
    lost: int = 0
    duplicated: int = 0
    misrouted: int = 0
    acked_in_window: int = 0
    delivered_in_window: int = 0
    delivery_us: array[int] = field(default_factory=lambda: array("q"))
    ack_us: array[int] = field(default_factory=lambda: array("q"))

    def merge(self, other: Tally) -> None:
        self.sent += other.sent
        self.acked += other.acked
        self.errors.update(other.errors)
        self.unanswered += other.unanswered
        self.delivered += other.delivered
        self.expected_deliveries += other.expected_deliveries
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.misrouted += other.misrouted
        self.acked_in_window += other.acked_in_window
        self.delivered_in_window += other.delivered_in_window
        self.delivery_us.extend(other.delivery_us)
        self.ack_us.extend(other.ack_us)

    def to_wire(self) -> dict[str, Any]:
        """A picklable, compact form for sending a worker's tally to the coordinator."""
        return {
            "counters": {
                name: getattr(self, name)
                for name in (
                    "sent",
                    "acked",
                    "unanswered",
                    "delivered",
                    "expected_deliveries",
                    "lost",
                    "duplicated",
                    "misrouted",
                    "acked_in_window",
                    "delivered_in_window",
                )
            },
            "errors": dict(self.errors),
            "delivery_us": self.delivery_us.tobytes(),
            "ack_us": self.ack_us.tobytes(),
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Tally:
        tally = cls(**wire["counters"], errors=Counter(wire["errors"]))
        tally.delivery_us.frombytes(wire["delivery_us"])
        tally.ack_us.frombytes(wire["ack_us"])
        return tally


class Ledger:
    """Tracks every message from send to its last expected delivery.

    A message is *lost* when its send was acknowledged as ok but some device that should have
    received ``newMessage`` never did; a delivery is *duplicated* when a device receives the
    same message twice, and *misrouted* when it reaches a device that should not get it at all
    (including messages whose send failed). Deliveries may arrive before the ack: both orders
    are fine. Latencies count only messages sent inside the measurement window, and the rate
    counters only events inside it, so a warm-up can be excluded.
    """

    def __init__(self) -> None:
        self._flights: dict[int, _Flight] = {}
        self._next_seq = 0
        self.tally = Tally()
        self.window_start_ns = 0
        self.window_end_ns = 1 << 62

    @property
    def in_flight(self) -> int:
        """Messages sent but not yet answered by an ack (or a timeout)."""
        return self.tally.sent - self.tally.acked - sum(self.tally.errors.values())

    def set_window(self, start_ns: int, end_ns: int) -> None:
        self.window_start_ns = start_ns
        self.window_end_ns = end_ns

    def sent(self, sent_ns: int, expected: frozenset[int]) -> int:
        """Record a send; returns its sequence number (to embed in the clientMessageId)."""
        seq = self._next_seq
        self._next_seq += 1
        self._flights[seq] = _Flight(sent_ns, expected)
        self.tally.sent += 1
        return seq

    def answered(self, seq: int, now_ns: int, error_code: str | None = None) -> bool:
        """Record the ack of ``seq`` (``error_code`` None means ok); False if already answered."""
        flight = self._flights.get(seq)
        if flight is None or flight.answer != _IN_FLIGHT:
            return False
        tally = self.tally
        if error_code is None:
            flight.answer = _ACKED
            tally.acked += 1
            tally.expected_deliveries += len(flight.expected)
            if self.window_start_ns <= now_ns <= self.window_end_ns:
                tally.acked_in_window += 1
            if flight.sent_ns >= self.window_start_ns:
                tally.ack_us.append((now_ns - flight.sent_ns) // _NS_PER_US)
            if not flight.pending:
                del self._flights[seq]
        else:
            flight.answer = _FAILED
            tally.errors[error_code] += 1
        return True

    def timed_out(self, seq: int) -> None:
        """Give up waiting for the ack of ``seq``; a late ack is then ignored."""
        flight = self._flights.get(seq)
        if flight is not None and flight.answer == _IN_FLIGHT:
            flight.answer = _TIMED_OUT
            self.tally.errors[TIMEOUT_CODE] += 1

    def delivered(self, seq: int, device: int, now_ns: int) -> None:
        """Record a ``newMessage`` for ``seq`` arriving on ``device``."""
        tally = self.tally
        flight = self._flights.get(seq)
        if flight is None:
            # Fully delivered and forgotten (any arrival now is one too many) or never sent.
            if 0 <= seq < self._next_seq:
                tally.duplicated += 1
            else:
                tally.misrouted += 1
            return
        if device in flight.pending and flight.answer != _FAILED:
            flight.pending.discard(device)
            tally.delivered += 1
            if self.window_start_ns <= now_ns <= self.window_end_ns:
                tally.delivered_in_window += 1
            if flight.sent_ns >= self.window_start_ns:
                tally.delivery_us.append((now_ns - flight.sent_ns) // _NS_PER_US)
            if not flight.pending and flight.answer == _ACKED:
                del self._flights[seq]
        elif device in flight.expected and flight.answer != _FAILED:
            tally.duplicated += 1
        else:
            tally.misrouted += 1

    def overdue(self, older_than_ns: int) -> list[int]:
        """Sequence numbers still waiting for an ack that were sent before ``older_than_ns``."""
        return [
            seq
            for seq, flight in self._flights.items()
            if flight.answer == _IN_FLIGHT and flight.sent_ns < older_than_ns
        ]

    def undelivered(self) -> int:
        """Deliveries still owed for acked messages (the would-be losses, while draining)."""
        return sum(len(f.pending) for f in self._flights.values() if f.answer == _ACKED)

    def close(self) -> Tally:
        """Finish the run: owed deliveries become losses, unanswered sends are counted."""
        tally = self.tally
        for flight in self._flights.values():
            if flight.answer == _ACKED:
                tally.lost += len(flight.pending)
            elif flight.answer == _IN_FLIGHT:
                tally.unanswered += 1
        self._flights.clear()
        return tally


def ack_error(answer: Any) -> str | None:
    """None for a successful ack envelope, else its error code (MALFORMED_ACK if it has none)."""
    if isinstance(answer, dict) and answer.get("ok") is True:
        return None
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return str(answer["error"].get("code", "MALFORMED_ACK"))
    return "MALFORMED_ACK"


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def load_result(
    *,
    tally: Tally,
    config: dict[str, Any],
    measured_seconds: float,
    offered_per_s: float | None,
    loadgen_cpu_seconds: float,
    servers: Sequence[dict[str, Any]],
    started_at: str,
) -> dict[str, Any]:
    """The JSON document of a load run (schema ``messaging-bench/1``)."""
    cpu_ms_per_message = loadgen_cpu_seconds * 1000 / tally.acked if tally.acked else None
    return {
        "schema": RESULT_SCHEMA,
        "mode": "load",
        "started_at": started_at,
        "config": config,
        "measured_seconds": round(measured_seconds, 3),
        "totals": {
            "sent": tally.sent,
            "acked": tally.acked,
            "errors": dict(sorted(tally.errors.items())),
            "unanswered": tally.unanswered,
            "expected_deliveries": tally.expected_deliveries,
            "delivered": tally.delivered,
            "lost": tally.lost,
            "duplicated": tally.duplicated,
            "misrouted": tally.misrouted,
        },
        "rates": {
            "offered_per_s": offered_per_s,
            "acked_per_s": round(rate(tally.acked_in_window, measured_seconds), 1),
            "delivered_per_s": round(rate(tally.delivered_in_window, measured_seconds), 1),
        },
        "latency_ms": {
            "send_to_receive": LatencySummary.of_microseconds(tally.delivery_us).as_json(),
            "send_to_ack": LatencySummary.of_microseconds(tally.ack_us).as_json(),
        },
        "loadgen": {
            "procs": config.get("procs"),
            "cpu_seconds": round(loadgen_cpu_seconds, 3),
            "cpu_ms_per_message": None
            if cpu_ms_per_message is None
            else round(cpu_ms_per_message, 4),
        },
        "servers": list(servers),
        "clean": tally.lost == 0 and tally.duplicated == 0 and tally.misrouted == 0,
    }


def server_cpu_entry(
    *, name: str, pid: int | None, cpu_seconds: float | None, acked: int
) -> dict[str, Any]:
    """Per-replica CPU cost: seconds of user+system time, and milliseconds per acked message."""
    per_message = None
    if cpu_seconds is not None and acked:
        per_message = round(cpu_seconds * 1000 / acked, 4)
    return {
        "name": name,
        "pid": pid,
        "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 3),
        "cpu_ms_per_message": per_message,
    }


def memory_per_socket(
    before: Sequence[int | None], after: Sequence[int | None], sockets: int
) -> float | None:
    """Bytes of server memory each held socket costs, over every replica that reported both."""
    pairs = [(b, a) for b, a in zip(before, after, strict=True) if b is not None and a is not None]
    if not pairs or sockets <= 0:
        return None
    return sum(a - b for b, a in pairs) / sockets
