"""Prometheus metrics of the service; ``/metrics`` on the HTTP port exports them.

Label values are always from small fixed sets (event names, error codes, gRPC methods): never a
user id or conversation id, which would make a series per user.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import prometheus_client
from prometheus_client import Gauge, values

# The send path counts and times every message a dozen times (events, commits, deliveries,
# backplane lag). prometheus_client's inc() and observe() check that the series is not a labelled
# parent, go through a value object's inc() per call and walk the buckets in Python: about 15
# Python calls per message for what is a few additions. Counter and Histogram here do the same
# additions under the same per-value locks, with the check done once (a series that can be
# observed has its values; a parent has none) and the bucket found by bisection. Anything else
# (exemplars, a negative or NaN amount, multiprocess mode) takes the stock path.
_LEAN = values.ValueClass is values.MutexValue


class Counter(prometheus_client.Counter):
    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        value = self.__dict__.get("_value")
        if not _LEAN or value is None or exemplar or not amount >= 0:
            return super().inc(amount, exemplar)
        with value._lock:
            value._value += amount
        return None


class Histogram(prometheus_client.Histogram):
    def _metric_init(self) -> None:
        super()._metric_init()
        self._bounds = list(self._upper_bounds)  # ends with +Inf: bisection always lands

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        bounds: list[float] | None = self.__dict__.get("_bounds")
        if not _LEAN or bounds is None or exemplar or math.isnan(amount):
            return super().observe(amount, exemplar)
        total: Any = self._sum
        with total._lock:
            total._value += amount
        bucket: Any = self._buckets[bisect.bisect_left(bounds, amount)]
        with bucket._lock:
            bucket._value += 1
        return None


LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

CONNECTED_SOCKETS = Gauge(
    "messaging_connected_sockets",
    "Socket.IO connections open on this process (the operator scales on it).",
)
CONNECTED_USERS = Gauge(
    "messaging_connected_users", "Distinct users with at least one socket on this process."
)
MESSAGES_SENT = Counter(
    "messaging_messages_sent_total",
    "sendMessage requests by outcome: stored, duplicate (clientMessageId repeat) or an error code.",
    ["outcome"],
)
MESSAGES_STORED = MESSAGES_SENT.labels(outcome="stored")  # the hot path's series, resolved once
MESSAGES_DUPLICATE = MESSAGES_SENT.labels(outcome="duplicate")
SEND_TO_COMMIT = Histogram(
    "messaging_send_to_commit_seconds",
    "From a sendMessage arriving to its message being committed.",
    buckets=LATENCY_BUCKETS,
)
COMMIT_TO_DELIVER = Histogram(
    "messaging_commit_to_deliver_seconds",
    "From a message's commit to its newMessage being handed to a local socket.",
    ["path"],
    buckets=LATENCY_BUCKETS,
)
SOCKET_EVENTS = Counter(
    "messaging_socket_events_total",
    "Client-to-server Socket.IO events by name and outcome (ok or an error code).",
    ["event", "outcome"],
)
SOCKET_EVENT_SECONDS = Histogram(
    "messaging_socket_event_seconds",
    "Time to answer a client-to-server Socket.IO event.",
    ["event"],
    buckets=LATENCY_BUCKETS,
)
CONNECTS = Counter(
    "messaging_socket_connects_total",
    "Socket.IO handshakes by outcome (accepted, or the refusal's error code).",
    ["outcome"],
)
SESSIONS_EXPIRED = Counter(
    "messaging_sessions_expired_total",
    "Sockets disconnected because their token expired without a reauthenticate.",
)
PROTOCOL_ERRORS = Counter(
    "messaging_protocol_errors_total",
    "Frames and requests refused at the transport, by kind (docs/security.md, Transport limits).",
    ["kind"],
)
GRPC_REQUESTS = Counter(
    "messaging_grpc_requests_total", "gRPC requests by method and status code.", ["method", "code"]
)
GRPC_SECONDS = Histogram(
    "messaging_grpc_request_seconds",
    "gRPC request latency by method.",
    ["method"],
    buckets=LATENCY_BUCKETS,
)
CONNECTIONS_CHECKS = Counter(
    "messaging_connections_checks_total",
    "First-degree-connection checks by result and source (cache, rpc, error).",
    ["result", "source"],
)
CONNECTIONS_LATENCY = Histogram(
    "messaging_connections_rpc_seconds",
    "Latency of calls to the Connections service.",
    buckets=LATENCY_BUCKETS,
)
BACKPLANE_PUBLISHED = Counter(
    "messaging_backplane_published_total",
    "Events published to the Redis backplane, by outcome.",
    ["outcome"],
)
BACKPLANE_RECEIVED = Counter(
    "messaging_backplane_received_total", "Events received from the Redis backplane."
)
BACKPLANE_LAG = Histogram(
    "messaging_backplane_lag_seconds",
    "From publishing an event on one replica to receiving it on another.",
    buckets=LATENCY_BUCKETS,
)
BACKPLANE_LISTENER_UP = Gauge(
    "messaging_backplane_listener_up",
    "1 while the Redis backplane listener is subscribed and healthy, else 0.",
)
BACKPLANE_LISTENER_RESTARTS = Counter(
    "messaging_backplane_listener_restarts_total",
    "Times the backplane listener lost its subscription and resubscribed.",
)
BACKPLANE_LAST_HEARTBEAT = Gauge(
    "messaging_backplane_last_heartbeat_timestamp_seconds",
    "Unix time the backplane listener last heard from Redis (messages or its own ping).",
)
BACKPLANE_KEPT_LOCAL = Counter(
    "messaging_backplane_kept_local_total",
    "Events not published on the backplane because every socket of their users is on this"
    " replica (delivered locally only).",
)
DELIVERY_HEALED = Counter(
    "messaging_delivery_healed_total",
    "Events a replica delivered to its sockets from the change log after a gap in live delivery.",
)
DELIVERY_HEALS = Counter(
    "messaging_delivery_heals_total",
    "Times a replica read a user's change log to fill a gap, by what triggered it.",
    ["reason"],
)
DELIVERY_DUPLICATES = Counter(
    "messaging_delivery_duplicates_dropped_total",
    "Live events dropped because the user's sockets here already had them (by log position).",
)
REGISTRY_ERRORS = Counter(
    "messaging_presence_registry_errors_total",
    "Failed writes to the Redis connection registry (presence may lag until resync).",
)
DB_POOL_CONNECTIONS = Gauge(
    "messaging_db_pool_connections",
    "Database connections of this process's pool by state.",
    ["state"],
)
READ_REPLICA_READS = Counter(
    "messaging_read_replica_reads_total",
    "History and conversation-list reads with a read replica configured, by where they were "
    "served (replica, or primary: fallen back) and why (caught_up, waited for replay; lagging past "
    "the wait, replica_down, replica_error, not_a_standby).",
    ["read", "served_by", "reason"],
)
READ_REPLICA_LAG_BYTES = Gauge(
    "messaging_read_replica_lag_bytes",
    "How far the read replica's replay was behind the primary's WAL position when the last read "
    "checked it (bytes of WAL).",
)
READ_REPLICA_WAIT = Histogram(
    "messaging_read_replica_wait_seconds",
    "Time a read waited for the read replica to replay up to the read's bound (0 when caught up).",
    buckets=LATENCY_BUCKETS,
)
READ_REPLICA_UP = Gauge(
    "messaging_read_replica_up",
    "0 while the read replica is considered away (reads go to the primary), else 1.",
)
GROUP_COMMIT_SIZE = Histogram(
    "messaging_group_commit_messages",
    "Messages committed together in one transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
GROUP_COMMIT_ISOLATED = Counter(
    "messaging_group_commit_isolated_total",
    "Batches the database refused for their data, retried message by message so that only the "
    "bad rows fail.",
)
RATE_LIMITED = Counter(
    "messaging_rate_limited_total",
    "Requests refused with RATE_LIMITED by the per-user limits, by limit.",
    ["limit"],
)
RATE_LIMIT_REDIS_ERRORS = Counter(
    "messaging_rate_limit_redis_errors_total",
    "Rate-limit checks that could not reach Redis (the local limit alone applied).",
)
READY = Gauge("messaging_ready", "1 when this process reports ready (/readyz), else 0.")
DRAINING = Gauge("messaging_draining", "1 while this process drains its connections on shutdown.")


OUTCOME_CODES = (
    "ok",
    "VALIDATION_FAILED",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "RATE_LIMITED",
    "UNAVAILABLE",
    "INTERNAL",
)

BLOCK_CHECKS = Counter(
    "messaging_block_checks_total",
    "Block checks of a pair, by where the answer came from (cache, database).",
    ["source"],
)
BLOCK_INVALIDATIONS = Counter(
    "messaging_block_invalidations_total",
    "Block changes announced to the other replicas' caches, by outcome (acked: every "
    "subscribed replica confirmed; timeout: some did not in time; failed: Redis refused; "
    "local: no Redis).",
    ["outcome"],
)
REPORTS = Counter(
    "messaging_reports_total",
    "Messages reported by users, by reason (repeats of a report not counted).",
    ["reason"],
)


def prime(
    *, socket_events: list[str], grpc_methods: list[str], rate_limits: tuple[str, ...] = ()
) -> None:
    """Create every labelled series at zero, so rates and alerts have data from the first scrape.

    (Prometheus' advice for metrics whose label values are known in advance.)
    """
    for outcome in ("stored", "duplicate", *OUTCOME_CODES[1:]):
        MESSAGES_SENT.labels(outcome=outcome)
    for event in socket_events:
        SOCKET_EVENT_SECONDS.labels(event=event)
        for outcome in OUTCOME_CODES:
            SOCKET_EVENTS.labels(event=event, outcome=outcome)
    for outcome in ("accepted", "UNAUTHORIZED", "UNAVAILABLE", "RATE_LIMITED"):
        CONNECTS.labels(outcome=outcome)
    for limit in rate_limits:
        RATE_LIMITED.labels(limit=limit)
    for method in grpc_methods:
        GRPC_SECONDS.labels(method=method)
        for code in ("OK", "INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED",
                     "NOT_FOUND", "UNAVAILABLE", "INTERNAL"):  # fmt: skip
            GRPC_REQUESTS.labels(method=method, code=code)
    for result, source in (
        ("connected", "cache"),
        ("connected", "rpc"),
        ("not_connected", "cache"),
        ("not_connected", "rpc"),
        ("error", "error"),
    ):
        CONNECTIONS_CHECKS.labels(result=result, source=source)
    for path in ("local", "backplane"):
        COMMIT_TO_DELIVER.labels(path=path)
    for outcome in ("published", "failed", "retried", "dropped"):
        BACKPLANE_PUBLISHED.labels(outcome=outcome)
    for reason in ("gap", "check", "resubscribed", "stalled"):
        DELIVERY_HEALS.labels(reason=reason)
    _prime_moderation()


def _prime_moderation() -> None:
    """The series of blocking and reports (``prime``'s part for them)."""
    for source in ("cache", "database"):
        BLOCK_CHECKS.labels(source=source)
    for outcome in ("acked", "timeout", "failed", "local"):
        BLOCK_INVALIDATIONS.labels(outcome=outcome)
    for reason in ("spam", "abuse", "other"):
        REPORTS.labels(reason=reason)


# Webhooks. ``endpoint`` is the configured URL without its query (a few per cluster).
WEBHOOK_DELIVERIES = Counter(
    "messaging_webhook_deliveries_total",
    "Webhook deliveries settled, by endpoint and outcome: delivered, retried (a failed attempt "
    "rescheduled), expired (failing past the retry window), gone (410: endpoint disabled), "
    "dropped (endpoint no longer configured or disabled).",
    ["endpoint", "outcome"],
)
WEBHOOK_ATTEMPTS = Counter(
    "messaging_webhook_attempts_total", "Webhook HTTP attempts started, by endpoint.", ["endpoint"]
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "messaging_webhook_attempt_seconds",
    "Duration of one webhook HTTP attempt (answer or timeout).",
    buckets=LATENCY_BUCKETS,
)
WEBHOOK_BACKLOG = Gauge(
    "messaging_webhook_outbox_backlog",
    "Webhook deliveries in the outbox (due, leased or waiting to retry), as last counted here.",
)
WEBHOOK_OLDEST_DUE = Gauge(
    "messaging_webhook_outbox_oldest_due_seconds",
    "How long the oldest due webhook delivery has been waiting to be sent (0: none due).",
)
WEBHOOK_NOTIFICATIONS = Counter(
    "messaging_webhook_notifications_total",
    "Push-notification checks come due: requested (no device of the recipient marked the "
    "message delivered) or skipped (one did).",
    ["outcome"],
)
