"""Sending webhooks: the dispatcher every replica runs, over the transactional outbox.

Each pass claims due deliveries (``storage/outbox.py``: a lease, taken with ``FOR UPDATE SKIP
LOCKED``, so two replicas never send the same attempt at once), POSTs them concurrently with a
signed Standard Webhooks request (``webhook_signing.py``; aiohttp's HTTP/1.1 client, or httpx
with HTTP/2 when ``MESSAGING_WEBHOOK_HTTP2`` is on), and settles them in one transaction:
a 2xx deletes the row (the outbox is pruned as it delivers), ``410 Gone`` disables the endpoint
for every replica, anything else (another status, a timeout, a refused connection) reschedules it
with jittered exponential back-off until it has failed for longer than the retry window. A replica
killed mid-delivery settles nothing: its rows come due again when their lease ends, and another
replica sends them with the same ``webhook-id``.

The same loop turns due push-notification checks into ``notification.requested`` events (in the
transaction that deletes the checks, so at most one per recipient and message).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, TextIO
from urllib.parse import urlsplit

import aiohttp
import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from messaging import metrics
from messaging.outbox import CONSOLE, Endpoint, Outbox, notification_requested
from messaging.settings import Settings
from messaging.storage import outbox as sql
from messaging.storage.outbox import Claimed
from messaging.webhook_signing import gives_up, headers, retry_delay, webhook_id

log = logging.getLogger(__name__)

BACKLOG_EVERY_SECONDS = 5.0
DISABLED_EVERY_SECONDS = 30.0
ERROR_PAUSE_SECONDS = 1.0
USER_AGENT = "messaging-webhooks/1"


def endpoint_label(url: str) -> str:
    """The metrics label of an endpoint: its URL without query or credentials."""
    if url == CONSOLE:
        return "console"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


@dataclass(frozen=True, slots=True)
class Policy:
    """Timing of the dispatcher (from settings; short in tests)."""

    timeout_seconds: float = 10.0
    lease_seconds: float = 60.0
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 3600.0
    retry_window_seconds: float = 86_400.0
    poll_seconds: float = 0.5
    concurrency: int = 32
    http2: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            timeout_seconds=settings.webhook_timeout_seconds,
            lease_seconds=settings.webhook_lease_seconds,
            retry_base_seconds=settings.webhook_retry_base_seconds,
            retry_max_seconds=settings.webhook_retry_max_seconds,
            retry_window_seconds=settings.webhook_retry_window_seconds,
            poll_seconds=settings.webhook_poll_seconds,
            concurrency=settings.webhook_concurrency,
            http2=settings.webhook_http2,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    delivery: Claimed
    result: str  # delivered | failed | gone | dropped
    error: str = ""


class SendFailed(Exception):
    """An attempt got no HTTP answer (timeout, refused or broken connection)."""


class Sender(Protocol):
    """POSTs one attempt; returns the status, or raises ``SendFailed``."""

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int: ...

    async def close(self) -> None: ...


class AiohttpSender:
    """HTTP/1.1 with keep-alive (aiohttp): the default, as it costs a tenth of the CPU per
    request of httpx here (BENCHMARKS.md, "Webhooks")."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # in the running loop, on first use
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._policy.concurrency, keepalive_timeout=30.0
                ),
                timeout=aiohttp.ClientTimeout(
                    total=self._policy.timeout_seconds,
                    connect=min(5.0, self._policy.timeout_seconds),
                ),
                headers={"user-agent": USER_AGENT},
                auto_decompress=False,
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        try:
            async with self._open().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as reply:
                await reply.read()
                return reply.status
        except TimeoutError as exc:
            raise SendFailed("timeout") from exc
        except aiohttp.ClientError as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpxSender:
    """HTTP/2 where the endpoint offers it (TLS with ALPN), HTTP/1.1 otherwise (httpx with h2;
    ``MESSAGING_WEBHOOK_HTTP2``)."""

    def __init__(self, policy: Policy) -> None:
        self._client = httpx.AsyncClient(
            http2=True,
            timeout=httpx.Timeout(policy.timeout_seconds, connect=min(5.0, policy.timeout_seconds)),
            limits=httpx.Limits(
                max_connections=policy.concurrency,
                max_keepalive_connections=policy.concurrency,
                keepalive_expiry=30.0,
            ),
            follow_redirects=False,
            headers={"user-agent": USER_AGENT},
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        try:
            reply = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise SendFailed("timeout") from exc
        except httpx.HTTPError as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
        return reply.status_code

    async def close(self) -> None:
        await self._client.aclose()


def build_sender(policy: Policy) -> Sender:
    return HttpxSender(policy) if policy.http2 else AiohttpSender(policy)


class Dispatcher:
    """Claims, sends and settles webhook deliveries; one per replica, started by ``app.py``."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        outbox: Outbox,
        policy: Policy,
        sender: Sender | None = None,
        console: TextIO | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._policy = policy
        self._sender = sender or build_sender(policy)
        self._console = console
        self._jitter = jitter
        self._disabled: set[str] = set()
        self._disabled_checked = 0.0
        self._backlog_checked = 0.0

    async def run(self) -> None:
        """Until cancelled; a database or network failure pauses a pass, never ends the loop."""
        while True:
            try:
                busy = await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook dispatch failed", extra={"error": repr(exc)[:300]})
                await asyncio.sleep(ERROR_PAUSE_SECONDS)
                continue
            if not busy:
                await asyncio.sleep(self._policy.poll_seconds)

    async def pass_once(self) -> bool:
        """One round: notification checks, then one batch of deliveries. True if it was full."""
        now = time.monotonic()
        if now - self._disabled_checked >= DISABLED_EVERY_SECONDS:
            async with self._engine.connect() as conn:
                self._disabled = await sql.disabled_endpoints(conn)
            self._disabled_checked = now
        if now - self._backlog_checked >= BACKLOG_EVERY_SECONDS:
            await self.observe_backlog()
            self._backlog_checked = now
        for url in self._disabled:
            self._outbox.disable(url)
        notified = await self.request_notifications()
        sent = await self.deliver_batch()
        return max(notified, sent) >= self._policy.concurrency

    async def observe_backlog(self) -> None:
        """Set the backlog gauges; prune what was left for endpoints no longer configured."""
        at = datetime.now(UTC)
        async with self._engine.begin() as conn:
            await sql.prune_unknown(
                conn,
                endpoints=list(self._outbox.endpoints),
                created_before=at - timedelta(seconds=self._policy.retry_window_seconds),
            )
            count, oldest_due = await sql.backlog(conn, now=at)
        metrics.WEBHOOK_BACKLOG.set(count)
        metrics.WEBHOOK_OLDEST_DUE.set(
            0.0 if oldest_due is None else max(0.0, (at - oldest_due).total_seconds())
        )

    async def request_notifications(self) -> int:
        """Turn due push-notification checks into ``notification.requested`` events."""
        at = datetime.now(UTC)
        async with self._engine.begin() as conn:
            due = await sql.claim_due_notifications(conn, now=at, limit=self._policy.concurrency)
            if not due:
                return 0
            wanted = [d for d in due if not d.delivered]
            counts = await sql.unread_counts(conn, wanted)
            await self._outbox.record_many(
                conn,
                [
                    (
                        "notification.requested",
                        notification_requested(
                            user_id=d.user_id,
                            conversation_id=d.conversation_id,
                            message_id=d.message_id,
                            author_id=d.author_id,
                            content=d.content,
                            unread_count=counts[(d.user_id, d.conversation_id)],
                            preview=self._outbox.notify_preview,
                        ),
                    )
                    for d in wanted
                ],
                at=at,
            )
            await sql.delete_notifications(conn, due)
        metrics.WEBHOOK_NOTIFICATIONS.labels(outcome="requested").inc(len(wanted))
        metrics.WEBHOOK_NOTIFICATIONS.labels(outcome="skipped").inc(len(due) - len(wanted))
        return len(due)

    async def deliver_batch(self) -> int:
        """Claim up to ``concurrency`` due deliveries, send them at once, settle them."""
        at = datetime.now(UTC)
        async with self._engine.begin() as conn:
            claimed = await sql.claim_due(
                conn,
                endpoints=list(self._outbox.endpoints),
                now=at,
                lease_until=at + timedelta(seconds=self._policy.lease_seconds),
                limit=self._policy.concurrency,
            )
        if not claimed:
            return 0
        try:
            outcomes = await asyncio.gather(*(self._attempt(d) for d in claimed))
        except asyncio.CancelledError:
            # Stopping: hand the unsettled rows back at once instead of at the lease's end (an
            # attempt that reached its receiver is sent again: at least once).
            await asyncio.shield(self._release(claimed))
            raise
        await self._settle(outcomes)
        return len(claimed)

    async def _release(self, claimed: list[Claimed]) -> None:
        at = datetime.now(UTC)
        try:
            async with self._engine.begin() as conn:
                for delivery in claimed:
                    await sql.retry_later(conn, delivery, due_at=at, error="replica stopped")
        except Exception as exc:  # the lease runs out anyway
            log.warning("could not release webhook deliveries", extra={"error": repr(exc)[:300]})

    async def _attempt(self, delivery: Claimed) -> Outcome:
        endpoint = self._outbox.endpoints.get(delivery.endpoint)
        if endpoint is None or delivery.endpoint in self._disabled:
            return Outcome(delivery, "dropped")  # recorded before this replica knew
        label = endpoint_label(endpoint.url)
        metrics.WEBHOOK_ATTEMPTS.labels(endpoint=label).inc()
        if endpoint.url == CONSOLE:
            print(f"webhook {delivery.event_type} {delivery.body}", file=self._out, flush=True)
            return Outcome(delivery, "delivered")
        return await self._post(endpoint, delivery)

    @property
    def _out(self) -> TextIO:
        return self._console or sys.stdout

    async def _post(self, endpoint: Endpoint, delivery: Claimed) -> Outcome:
        body = delivery.body.encode()
        msg_id = webhook_id(delivery.id)
        sent = headers(endpoint.key, msg_id=msg_id, timestamp=int(time.time()), body=body)
        started = time.perf_counter()
        try:
            status = await self._sender.post(endpoint.url, body, sent)
        except SendFailed as exc:
            return Outcome(delivery, "failed", str(exc))
        finally:
            metrics.WEBHOOK_ATTEMPT_SECONDS.observe(time.perf_counter() - started)
        if 200 <= status < 300:
            return Outcome(delivery, "delivered")
        if status == 410:
            return Outcome(delivery, "gone", "410 Gone")
        return Outcome(delivery, "failed", f"HTTP {status}")

    async def _settle(self, outcomes: list[Outcome]) -> None:
        """Write every attempt's result in one transaction."""
        at = datetime.now(UTC)
        done: list[Claimed] = []
        counted: list[tuple[str, str]] = []
        async with self._engine.begin() as conn:
            for outcome in outcomes:
                d = outcome.delivery
                label = endpoint_label(d.endpoint)
                if outcome.result == "gone":
                    await sql.disable_endpoint(conn, d.endpoint, at=at, reason=outcome.error)
                    self._disabled.add(d.endpoint)
                    self._outbox.disable(d.endpoint)
                    log.warning("webhook endpoint disabled (410 Gone)", extra={"endpoint": label})
                    counted.append((label, "gone"))
                elif outcome.result == "failed":
                    age = (at - d.created_at).total_seconds()
                    if gives_up(age_seconds=age, window_seconds=self._policy.retry_window_seconds):
                        log.warning(
                            "webhook delivery expired",
                            extra={"endpoint": label, "type": d.event_type, "error": outcome.error},
                        )
                        done.append(d)
                        counted.append((label, "expired"))
                        continue
                    delay = retry_delay(
                        d.attempts,
                        base=self._policy.retry_base_seconds,
                        cap=self._policy.retry_max_seconds,
                        jitter=self._jitter(),
                    )
                    await sql.retry_later(
                        conn, d, due_at=at + timedelta(seconds=delay), error=outcome.error
                    )
                    counted.append((label, "retried"))
                else:
                    done.append(d)
                    counted.append((label, outcome.result))
            await sql.delete_settled(conn, done)
        for label, result in counted:
            metrics.WEBHOOK_DELIVERIES.labels(endpoint=label, outcome=result).inc()

    async def close(self) -> None:
        await self._sender.close()
