"""The messaging service running in the test's event loop, and Socket.IO devices to talk to it.

The service is the real ASGI app served by uvicorn on a loopback port, with a real database
(PostgreSQL, or SQLite for the embedded default) and the stand-in Connections service over real
gRPC. Clients are python-socketio's own ``AsyncClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import socketio
import uvicorn

from messaging.app import Service, build_service, create_app
from messaging.auth import mint_token
from messaging.db import migrate
from messaging.dev_connections import ConnectionGraph, start_connections_server
from messaging.settings import Settings
from tests.support.servers import PostgresServer, free_port

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123"


def unique(prefix: str = "user") -> str:
    """A user id no other test uses, so tests share one database without interfering."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class RunningService:
    url: str
    grpc_target: str
    settings: Settings
    service: Service
    graph: ConnectionGraph
    backend: str

    def token(self, user_id: str, **claims: Any) -> str:
        return mint_token(self.settings, user_id, extra_claims=claims or None)

    def connect_users(self, *pairs: tuple[str, str]) -> None:
        for a, b in pairs:
            self.graph.connect(a, b)


def service_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mode": "dev",
        "http_port": free_port(),
        "grpc_port": free_port(),
        "database_url": database_url,
        "jwt_secret": JWT_SECRET,
        # The in-process service, its Connections stand-in and the test's clients share one
        # event loop on a loaded CI host: a 0.3 s deadline was missed there by a healthy call.
        # Tests of the deadline itself make the stand-in slower than this.
        "connections_timeout_seconds": 2.0,
        "connections_cache_ttl_seconds": 0.0,
        "replica_id": unique("replica"),
        "auto_migrate": False,
        "log_level": "WARNING",
        # Dev mode's local attachment store, kept out of the working directory.
        "attachments_dir": Path(tempfile.mkdtemp(prefix="messaging-attachments-")),
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, graph: ConnectionGraph, backend: str
) -> AsyncIterator[RunningService]:
    """Serve ``settings`` with uvicorn in this event loop until the block exits."""
    connections, port = await start_connections_server(graph)
    settings = settings.model_copy(update={"connections_address": f"127.0.0.1:{port}"})
    service = build_service(settings)
    config = uvicorn.Config(
        create_app(settings, service),
        host="127.0.0.1",
        port=settings.http_port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
        ws_per_message_deflate=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield RunningService(
            url=f"http://127.0.0.1:{settings.http_port}",
            grpc_target=f"127.0.0.1:{settings.grpc_port}",
            settings=settings,
            service=service,
            graph=graph,
            backend=backend,
        )
    finally:
        server.should_exit = True
        await task
        await connections.stop(0)


@pytest.fixture(scope="session")
def postgres_database(postgres_server: PostgresServer) -> str:
    """One migrated database for the session's in-process services."""
    url = postgres_server.create_database(f"svc_{uuid.uuid4().hex[:8]}")
    migrate(Settings(database_url=url, jwt_secret=JWT_SECRET))
    return url


@pytest.fixture(scope="session")
def sqlite_database() -> str:
    path = Path(tempfile.mkdtemp(prefix="messaging-sqlite-")) / "messaging.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate(Settings(database_url=url))
    return url


@pytest.fixture(scope="session", params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every test using the service runs on PostgreSQL and on the embedded SQLite default."""
    return str(request.param)


@pytest.fixture(scope="session")
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    name = "postgres_database" if backend == "postgres" else "sqlite_database"
    return str(request.getfixturevalue(name))


@pytest_asyncio.fixture(scope="session")
async def svc(database_url: str, backend: str) -> AsyncIterator[RunningService]:
    graph = ConnectionGraph()
    async with running_service(service_settings(database_url), graph, backend) as running:
        yield running


@pytest_asyncio.fixture(scope="session")
async def pg_svc(postgres_database: str) -> AsyncIterator[RunningService]:
    """The service on PostgreSQL only, for tests of what only PostgreSQL does (row locks, plans)."""
    graph = ConnectionGraph()
    async with running_service(service_settings(postgres_database), graph, "postgres") as running:
        yield running


@dataclass
class Device:
    """One connected client device (a python-socketio AsyncClient) that records what it hears."""

    url: str
    token: str | None
    transports: list[str] | None = None
    client: socketio.AsyncClient = field(init=False)
    inbox: dict[str, asyncio.Queue[Any]] = field(default_factory=dict)
    connect_error: Any = None
    # The syncToken of every event received, in arrival order, taken off the event so it
    # compares equal to the Message of the sender's ack (whose token is another user's).
    sync_tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)

        async def record(event: str, data: Any = None) -> None:
            if isinstance(data, dict) and "syncToken" in data:
                data = dict(data)
                self.sync_tokens.append(data.pop("syncToken"))
            self.queue(event).put_nowait(data)

        async def refused(data: Any = None) -> None:
            self.connect_error = data

        self.client.on("*", record)
        self.client.on("connect_error", refused)

    def queue(self, event: str) -> asyncio.Queue[Any]:
        return self.inbox.setdefault(event, asyncio.Queue())

    async def connect(self, *, auth: Any = None, headers: dict[str, str] | None = None) -> None:
        if auth is None and self.token is not None:
            auth = {"token": self.token}
        await self.client.connect(
            self.url,
            auth=auth,
            headers=headers or {},
            transports=self.transports or ["websocket"],
            wait_timeout=5,
        )

    async def call(self, event: str, payload: Any = None, timeout: float = 5.0) -> Any:
        if payload is None:
            return await self.client.call(event, timeout=timeout)
        return await self.client.call(event, payload, timeout=timeout)

    async def ok(self, event: str, payload: Any = None) -> Any:
        """Call and insist on success; returns the ack's data."""
        reply = await self.call(event, payload)
        assert reply["ok"] is True, reply
        return reply["data"]

    async def next(self, event: str, timeout: float = 5.0) -> Any:
        return await asyncio.wait_for(self.queue(event).get(), timeout)

    async def nothing(self, event: str, wait: float = 0.3) -> None:
        """Assert no ``event`` arrives within ``wait`` seconds."""
        await asyncio.sleep(wait)
        assert self.queue(event).empty(), f"unexpected {event}: {self.queue(event).get_nowait()}"

    def drain(self, event: str) -> list[Any]:
        items = []
        queue = self.queue(event)
        while not queue.empty():
            items.append(queue.get_nowait())
        return items

    async def disconnect(self) -> None:
        if self.client.connected:
            await self.client.disconnect()


@contextlib.asynccontextmanager
async def devices(svc: RunningService, *users: str) -> AsyncIterator[list[Device]]:
    """Connected devices for ``users`` (repeat a user for several devices), closed afterwards."""
    connected = [Device(svc.url, svc.token(u)) for u in users]
    try:
        await asyncio.gather(*(d.connect() for d in connected))
        yield connected
    finally:
        await asyncio.gather(*(d.disconnect() for d in connected), return_exceptions=True)


async def open_conversation(svc: RunningService, a: Device, b_user: str) -> str:
    data = await a.ok("createConversation", {"participantId": b_user})
    return str(data["id"])


def empty_database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty database of ``backend``: for tests that migrate it themselves."""
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return server.create_database(f"mig_{uuid.uuid4().hex[:8]}")
    return f"sqlite+aiosqlite:///{tmp_path}/{uuid.uuid4().hex[:8]}.db"
