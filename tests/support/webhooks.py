"""A real webhook receiver for the tests: an aiohttp server on a loopback port that records
every request (headers and body) and answers what the test tells it to."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.servers import free_port

SECRET = "whsec_" + base64.b64encode(b"webhook-test-secret-32-bytes-ok!").decode()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


# Decides the status of a request (may wait: a receiver that hangs).
Responder = Callable[[Received], Awaitable[int]]


async def _ok(_: Received) -> int:
    return 204


@dataclass
class Receiver:
    port: int
    path: str = "/hooks"
    requests: list[Received] = field(default_factory=list)  # answered
    arrived: list[Received] = field(default_factory=list)  # as they came, answered or not
    respond: Responder = _ok
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        received = Received({k.lower(): v for k, v in request.headers.items()}, body, 0)
        self.arrived.append(received)
        async with self._arrived:
            self._arrived.notify_all()
        received.status = await self.respond(received)
        self.requests.append(received)
        async with self._arrived:
            self._arrived.notify_all()
        return web.Response(status=received.status)

    def delivered(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def events(self, predicate: Callable[[dict[str, Any]], bool]) -> list[Received]:
        return [r for r in self.delivered() if predicate(r.event)]

    async def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 30.0
    ) -> None:
        """Until ``predicate`` holds for what arrived (checked on every request)."""

        async def wait() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: predicate(self.requests))

        await asyncio.wait_for(wait(), timeout)


@contextlib.asynccontextmanager
async def receiver(port: int | None = None) -> AsyncIterator[Receiver]:
    running = Receiver(port or free_port())
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def about(*users: str) -> Callable[[dict[str, Any]], bool]:
    """Events that concern one of ``users`` (as author, participant, reader or recipient)."""
    wanted = set(users)

    def concerns(event: dict[str, Any]) -> bool:
        data = event["data"]
        values = {data.get(k) for k in ("authorId", "userId", "reporterId")}
        values |= set(data.get("participantIds", []))
        if isinstance(data.get("change"), dict):  # conversation.updated
            values.add(data["change"]["by"])
            values |= set(data["conversation"]["participantIds"])
        return bool(values & wanted)

    return concerns
