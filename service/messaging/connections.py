"""The first-degree-connection rule (REQ-1-029), asked of the Connections service over gRPC.

Answers are cached for a short TTL, positive and negative alike, because every sendMessage needs
one. When the Connections service is unreachable, slow or broken the check fails closed: the
caller gets ``UNAVAILABLE`` and nothing is allowed on a guess. Errors are never cached, so the
first call after the service comes back asks again.

Each entry lives a slightly different time (the TTL minus up to a fifth), so answers cached
together do not all expire in the same instant and send a burst of calls; and concurrent checks
of one pair share a single call.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

from messaging import metrics, tracing
from messaging.errors import Unavailable
from messaging.proto.connections.v1 import connections_pb2, connections_pb2_grpc

log = logging.getLogger(__name__)

TTL_JITTER = 0.2
_SERVICE = connections_pb2.DESCRIPTOR.services_by_name["ConnectionsService"].full_name
_IS_CONNECTED = f"{_SERVICE}/IsConnected"
_RPC_ATTRIBUTES = {"rpc.system": "grpc", "rpc.service": _SERVICE, "rpc.method": "IsConnected"}

Source = Literal["cache", "rpc", "error"]


@dataclass(frozen=True)
class ClientTls:
    """The CA that signs the Connections service's certificate, and our own identity for mTLS."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes() if self.key_file is not None else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file is not None else None,
        )


class ConnectionsChecker:
    """Asks whether two users are connected; one instance per process, built in the app factory."""

    def __init__(
        self,
        *,
        address: str,
        timeout_seconds: float,
        cache_ttl_seconds: float,
        cache_size: int,
        tls: ClientTls | None = None,
    ) -> None:
        self._address = address
        self._tls = tls
        self._timeout = timeout_seconds
        self._ttl = cache_ttl_seconds
        self._size = cache_size
        self._cache: OrderedDict[tuple[str, str], tuple[bool, float]] = OrderedDict()
        self._asking: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self._channel: grpc.aio.Channel | None = None
        self._stub: connections_pb2_grpc.ConnectionsServiceAsyncStub | None = None

    async def start(self) -> None:
        options = [
            ("grpc.keepalive_time_ms", 30_000),
            # Fail fast while the service is down instead of queueing calls behind backoff.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if self._tls is None:
            self._channel = grpc.aio.insecure_channel(self._address, options=options)
        else:
            self._channel = grpc.aio.secure_channel(
                self._address, self._tls.credentials(), options=options
            )
        self._stub = connections_pb2_grpc.ConnectionsServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def is_connected(self, user_id: str, other_user_id: str) -> bool:
        key = (user_id, other_user_id) if user_id <= other_user_id else (other_user_id, user_id)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            self._cache.move_to_end(key)
            _CHECKS[cached[0], "cache"].inc()
            return cached[0]
        connected = await self._ask_once(key, user_id, other_user_id)
        if self._ttl > 0 and self._size > 0:
            lifetime = self._ttl * (1 - random.random() * TTL_JITTER)  # noqa: S311 - not crypto
            self._cache[key] = (connected, time.monotonic() + lifetime)
            self._cache.move_to_end(key)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        _CHECKS[connected, "rpc"].inc()
        return connected

    async def _ask_once(self, key: tuple[str, str], user_id: str, other_user_id: str) -> bool:
        """Ask the Connections service, sharing one call among concurrent checks of a pair."""
        while (asking := self._asking.get(key)) is not None:
            try:
                return await asyncio.shield(asking)
            except asyncio.CancelledError:
                if not asking.cancelled():
                    raise  # we were cancelled ourselves
                # The asker was cancelled (its client went away): ask again ourselves.
        asking = asyncio.get_running_loop().create_future()
        self._asking[key] = asking
        try:
            connected = await self._ask(user_id, other_user_id)
        except asyncio.CancelledError:
            asking.cancel()
            raise
        except Exception as exc:
            asking.set_exception(exc)
            asking.exception()  # marks it retrieved: the waiters re-raise it themselves
            raise
        finally:
            del self._asking[key]
        asking.set_result(connected)
        return connected

    async def _ask(self, user_id: str, other_user_id: str) -> bool:
        if self._stub is None:
            raise RuntimeError("ConnectionsChecker.start() was not awaited")
        request = connections_pb2.IsConnectedRequest(user_id=user_id, other_user_id=other_user_id)
        started = time.perf_counter()
        try:
            with tracing.span(_IS_CONNECTED, kind=tracing.CLIENT, attributes=_RPC_ATTRIBUTES):
                reply = await self._stub.IsConnected(
                    request, timeout=self._timeout, metadata=tracing.inject()
                )
        except grpc.aio.AioRpcError as exc:
            metrics.CONNECTIONS_CHECKS.labels(result="error", source="error").inc()
            log.warning(
                "connections check failed closed",
                extra={"grpc_code": exc.code().name, "address": self._address},
            )
            raise Unavailable("the Connections service is unavailable; try again") from exc
        finally:
            metrics.CONNECTIONS_LATENCY.observe(time.perf_counter() - started)
        return bool(reply.connected)

    def forget(self) -> None:
        """Drop every cached answer (tests, and operators who changed the graph by hand)."""
        self._cache.clear()


def _result(connected: bool) -> str:
    return "connected" if connected else "not_connected"


# The series of a check by (connected, source), resolved once: every message checks its pair.
_CHECKS = {
    (connected, source): metrics.CONNECTIONS_CHECKS.labels(result=_result(connected), source=source)
    for connected in (True, False)
    for source in ("cache", "rpc")
}
