"""The pure side of ``bench.scaleout``: what a lock-wait sample says, and what a run cost.

No I/O here: the driver reads ``pg_stat_activity``/``pg_locks``, ``INFO commandstats``,
``/proc/<pid>/task/*/schedstat`` and the statistics views, and hands the rows and texts to these
functions, so how a wait is classified and how a cost is divided per message are tested directly
(``tests/bench/test_lockwaits.py``).

Why sampling: a lock wait that lasts a millisecond is invisible to a one-off query, but sampling
every ``interval`` seconds and counting the backends found waiting estimates the backend-seconds
spent waiting (count x interval), the way wait-event profilers (pg_wait_sampling, pgsentinel)
do. Divided by the messages committed in the same window it is a figure that does not
depend on how fast the machine happened to be.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# One query per sample: every non-idle backend of the benchmark's database, what it waits on,
# and the lock it has not been granted (if any), read together so the two agree. A row update that
# waits for another transaction holds the row's tuple lock and waits on that transaction's id
# (locktype ``transactionid``, no relation); the relation is then taken from the tuple lock it
# holds, so waits are attributed to the table whose rows are contended. An upsert
# (INSERT ... ON CONFLICT DO UPDATE) that meets a row being written waits on the writer's
# transaction id holding no tuple lock: no relation can be named, so its statement is (the batch
# statement of store.py writes new messages and log rows, whose keys are fresh, and bumps the
# participants' counter rows: the counters are the rows two such statements can share).
SAMPLE_SQL = """
SELECT coalesce(a.state, ''), coalesce(a.wait_event_type, ''), coalesce(a.wait_event, ''),
       coalesce(w.locktype, ''), coalesce(w.relation, ''), coalesce(w.mode, ''),
       CASE WHEN w.locktype IS NULL THEN '' ELSE left(a.query, 300) END
FROM pg_stat_activity a
LEFT JOIN LATERAL (
    SELECT l.locktype, coalesce(l.relation, t.relation)::regclass::text AS relation, l.mode
    FROM pg_locks l
    LEFT JOIN LATERAL (
        SELECT h.relation FROM pg_locks h
        WHERE h.pid = l.pid AND h.granted AND h.locktype = 'tuple' LIMIT 1
    ) t ON true
    WHERE l.pid = a.pid AND NOT l.granted LIMIT 1
) w ON true
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.backend_type = 'client backend' AND a.state <> 'idle'
"""


class BadSample(ValueError):
    """A row or text from the servers was not in the shape expected."""


@dataclass(frozen=True)
class WaitSample:
    """One look at the database: the active backends by what they waited on, the ungranted locks."""

    active: int
    waits: Mapping[str, int]  # "Lock:transactionid", "IO:WALSync", "CPU" (no wait event), ...
    locks: Mapping[str, int]  # "transactionid on user_streams (ShareLock)", ...


def wait_key(wait_event_type: str, wait_event: str) -> str:
    """``type:event``; an active backend with no wait event is on (or waiting for) a CPU."""
    if not wait_event_type:
        return "CPU"
    return f"{wait_event_type}:{wait_event}"


def statement_label(query: str, width: int = 60) -> str:
    """A waiting statement, short: its words from the first SQL verb on, whitespace collapsed."""
    words = query.split()
    verbs = ("INSERT", "UPDATE", "DELETE", "SELECT", "WITH", "LOCK", "COMMIT")
    start = next((i for i, w in enumerate(words) if w.upper() in verbs), 0)
    text = " ".join(words[start:])
    return text if len(text) <= width else text[: width - 3] + "..."


def lock_key(locktype: str, relation: str, mode: str, query: str = "") -> str:
    """``transactionid on user_streams (ShareLock)``, or with the statement when no relation
    can be named: ``transactionid in "WITH incoming AS ..." (ShareLock)``."""
    if relation:
        return f"{locktype} on {relation} ({mode})"
    if query:
        return f'{locktype} in "{statement_label(query)}" ({mode})'
    return f"{locktype} on ? ({mode})"


def parse_sample(rows: Iterable[Sequence[str]]) -> WaitSample:
    """A sample from ``SAMPLE_SQL``'s rows: state, wait type, wait event, the ungranted lock's
    type, relation and mode, and the waiting statement ('' when the backend waits for none)."""
    waits: Counter[str] = Counter()
    locks: Counter[str] = Counter()
    active = 0
    for row in rows:
        if len(row) != 7:
            raise BadSample(f"sample row {row!r}: expected state, wait type and event, lock")
        state, wait_type, event, locktype, relation, mode, query = row
        if state == "idle":
            continue
        # A backend idle in a transaction waits for its client (ClientRead), which is the
        # replica's own time between statements: counted apart from server-side waits.
        key = "ClientInTransaction" if state.startswith("idle in transaction") else None
        waits[key or wait_key(wait_type, event)] += 1
        if locktype:
            locks[lock_key(locktype, relation, mode, query)] += 1
        active += 1
    return WaitSample(active, dict(waits), dict(locks))


@dataclass
class WaitSummary:
    """Many samples, added up: backend-seconds per wait (count x interval) and per lock."""

    interval_s: float
    samples: int = 0
    active: int = 0
    waits: Counter[str] = field(default_factory=Counter)
    locks: Counter[str] = field(default_factory=Counter)
    samples_with_lock_wait: int = 0

    def add(self, sample: WaitSample) -> None:
        self.samples += 1
        self.active += sample.active
        self.waits.update(sample.waits)
        self.locks.update(sample.locks)
        if any(k.startswith("Lock:") for k in sample.waits):
            self.samples_with_lock_wait += 1

    @property
    def lock_waits(self) -> int:
        """Backends found waiting on a heavyweight lock, over all samples."""
        return sum(n for k, n in self.waits.items() if k.startswith("Lock:"))

    def as_json(self, messages: int) -> dict[str, Any]:
        """The totals, and lock waits as backend-milliseconds per committed message."""
        if self.interval_s <= 0:
            raise BadSample("sampling interval must be positive")
        per_message = (
            None if messages <= 0 else round(self.lock_waits * self.interval_s * 1000 / messages, 5)
        )
        return {
            "interval_s": self.interval_s,
            "samples": self.samples,
            "mean_active_backends": round(self.active / self.samples, 3) if self.samples else 0,
            "lock_waits": self.lock_waits,
            "samples_with_lock_wait": self.samples_with_lock_wait,
            "lock_wait_share": round(self.lock_waits / self.active, 4) if self.active else 0.0,
            "lock_wait_ms_per_message": per_message,
            "waits": dict(self.waits.most_common()),
            "locks_not_granted": dict(self.locks.most_common()),
        }


# --- counters before and after ------------------------------------------------------------


def parse_commandstats(text: str) -> dict[str, int]:
    """Calls per command from ``INFO commandstats`` (``cmdstat_publish:calls=12,usec=...``)."""
    calls: dict[str, int] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        if not sep or not name.startswith("cmdstat_"):
            raise BadSample(f"not a commandstats line: {line!r}")
        fields = dict(part.split("=", 1) for part in rest.split(",") if "=" in part)
        if "calls" not in fields:
            raise BadSample(f"commandstats line without calls: {line!r}")
        calls[name.removeprefix("cmdstat_")] = int(fields["calls"])
    return calls


def parse_schedstat(text: str) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of one task's schedstat line."""
    parts = text.split()
    if len(parts) < 2:
        raise BadSample(f"schedstat {text!r}: expected run and wait nanoseconds")
    return int(parts[0]) / 1e9, int(parts[1]) / 1e9


def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """after - before for every key in either (a key new in ``after`` started at 0).

    A counter that went down was reset (a restarted server, a stats reset): refused, because
    a delta across a reset is meaningless.
    """
    out: dict[str, float] = {}
    for key in sorted(set(before) | set(after)):
        change = after.get(key, 0) - before.get(key, 0)
        if change < 0:
            raise BadSample(f"counter {key} went backwards ({before.get(key)} -> {after.get(key)})")
        out[key] = change
    return out


def per_message(totals: Mapping[str, float], messages: int, digits: int = 4) -> dict[str, float]:
    """Each total divided by the messages committed over the same interval."""
    if messages <= 0:
        raise BadSample("no messages were committed: nothing to divide by")
    return {k: round(v / messages, digits) for k, v in totals.items()}


def delivery_split(
    *,
    cpu_per_message_low: float,
    deliveries_low: float,
    cpu_per_message_high: float,
    deliveries_high: float,
) -> tuple[float, float]:
    """CPU per message and per delivery from two runs that differ in deliveries per message.

    cost = m + d x deliveries_per_message; two runs give two equations. Returns (m, d).
    """
    if math.isclose(deliveries_low, deliveries_high):
        raise BadSample("the two runs need different deliveries per message")
    per_delivery = (cpu_per_message_high - cpu_per_message_low) / (deliveries_high - deliveries_low)
    return cpu_per_message_low - per_delivery * deliveries_low, per_delivery


def contention_share(runnable_wait_s: float, cpu_s: float) -> float:
    """Of the time a process wanted a core, the share it spent waiting for one (0..1)."""
    wanted = runnable_wait_s + cpu_s
    return 0.0 if wanted <= 0 else runnable_wait_s / wanted


# --- the report ----------------------------------------------------------------------------


def _runs(values: Sequence[float | None], fmt: str) -> str:
    return " / ".join("-" if v is None else format(v, fmt) for v in values)


# Statements the table names by what they are (the JSON keeps the statement's own words): the
# first whose words appear in the waiting statement.
KNOWN_STATEMENTS = {
    "UPDATE message_stream": "UPDATE message_stream",
    "WITH incoming AS": "store.py's batch INSERT",
}


def short_lock(key: str) -> str:
    head, sep, rest = key.partition(' in "')
    if not sep:
        return key
    statement, _, mode = rest.rpartition('" ')
    for words, name in KNOWN_STATEMENTS.items():
        if words in statement:
            return f"{head} in {name} {mode}"
    return key


def summary_table(steps: Sequence[Mapping[str, Any]]) -> str:
    """The markdown table of a ``bench.scaleout`` run: one row per revision, replica count and
    load, each cell the rounds' values in order ("run 1 / run 2")."""
    groups: dict[tuple[str, int, str], list[Mapping[str, Any]]] = {}
    refs: list[str] = []
    for step in steps:
        if step["ref"] not in refs:
            refs.append(step["ref"])
        groups.setdefault((step["ref"], step["replicas"], step["load"]), []).append(step)
    lines = [
        "| revision | replicas | load | acked/s | send->receive p50 ms | p99 ms "
        "| lock waits (samples) | lock wait ms per message | waited on | replica CPU ms/msg "
        "| replicas' run-queue wait ms/msg | run-queue share | load avg |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    order = sorted(groups, key=lambda k: (refs.index(k[0]), k[1], k[2]))
    for ref, replicas, load in order:
        runs = groups[(ref, replicas, load)]
        locks: Counter[str] = Counter()
        for s in runs:
            locks.update(s["lock_waits"]["locks_not_granted"])
        top = locks.most_common(1)[0][0] if locks else "-"
        lines.append(
            "| "
            + " | ".join(
                [
                    str(ref),
                    str(replicas),
                    str(load),
                    _runs([s["acked_per_s"] for s in runs], ",.0f"),
                    _runs([s["send_to_receive_ms"]["p50"] for s in runs], ".0f"),
                    _runs([s["send_to_receive_ms"]["p99"] for s in runs], ".0f"),
                    _runs([s["lock_waits"]["lock_waits"] for s in runs], "d"),
                    _runs([s["lock_waits"]["lock_wait_ms_per_message"] for s in runs], ".3f"),
                    short_lock(top).replace("|", "\\|"),
                    _runs([s["window"].get("replicas_cpu_ms_per_message") for s in runs], ".3f"),
                    _runs(
                        [s["window"].get("replicas_runqueue_wait_ms_per_message") for s in runs],
                        ".2f",
                    ),
                    _runs([s["window"].get("replicas_runqueue_share") for s in runs], ".0%"),
                    _runs([s["load1"][0] for s in runs], ".1f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)
