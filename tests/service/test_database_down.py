"""With the database unreachable, requests fail with UNAVAILABLE and the replica reports unready."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio

from messaging import db
from messaging.dev_connections import ConnectionGraph
from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from messaging.settings import Settings
from tests.support.servers import PostgresServer, free_port
from tests.support.service import (
    JWT_SECRET,
    RunningService,
    devices,
    open_conversation,
    running_service,
    service_settings,
    unique,
)


async def test_an_unreachable_database_means_unavailable_and_not_ready() -> None:
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/messaging"
    graph = ConnectionGraph(all_connected=True)
    async with running_service(service_settings(nowhere), graph, "postgres") as svc:
        alice, bob = unique("alice"), unique("bob")
        async with devices(svc, alice) as [a]:
            created = await a.call("createConversation", {"participantId": bob})
            synced = await a.call("syncMessages", {})
            assert a.client.connected
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{svc.url}/readyz")
            alive = await http.get(f"{svc.url}/healthz")
    assert created["error"]["code"] == "UNAVAILABLE"
    assert synced["error"]["code"] == "UNAVAILABLE"
    assert ready.status_code == 503
    assert any("database" in problem for problem in ready.json()["problems"])
    assert alive.status_code == 200


@pytest_asyncio.fixture
async def pg_svc(postgres_server: PostgresServer) -> AsyncIterator[RunningService]:
    """A service on a database of its own: these tests terminate every connection to it, which
    must not cut the pools of the session's other services. The healer's periodic backstop is
    pushed out of the way so that the test's own requests are the first to meet a cut
    connection (a backstop read meeting it first would replace the pool before they run)."""
    url = postgres_server.create_database(f"down_{uuid.uuid4().hex[:8]}")
    await asyncio.to_thread(db.migrate, Settings(database_url=url, jwt_secret=JWT_SECRET))
    settings = service_settings(url, delivery_check_seconds="300")
    async with running_service(settings, ConnectionGraph(), "postgres") as running:
        yield running


async def test_pooled_connections_cut_while_idle_are_replaced_not_failed(
    pg_svc: RunningService, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database restart (or a proxy timeout) kills idle pooled connections; the next request
    must get a fresh connection instead of an error."""
    monkeypatch.setattr(db, "IDLE_BEFORE_PING_SECONDS", 0.0)  # every checkout counts as idle
    alice = unique("alice")
    async with devices(pg_svc, alice) as [a]:
        assert (await a.call("syncMessages", {}))["ok"]
        database = pg_svc.settings.database_url.rsplit("/", 1)[1]
        terminate = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        killed = await asyncio.to_thread(postgres_server.psql, "postgres", terminate)
        assert int(killed) >= 1
        for _ in range(3):
            assert (await a.call("syncMessages", {}))["ok"]


async def test_a_database_that_refuses_more_connections_means_unavailable_and_not_ready(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    """``too many connections`` (SQLSTATE 53300) is the database being busy, not a bug: the
    client may retry (``UNAVAILABLE``, not ``INTERNAL``), and the replica is unready at once."""
    role = f"limited_{unique('r').replace('-', '_')}"
    database = postgres_database.rsplit("/", 1)[1]
    postgres_server.psql("postgres", f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
    postgres_server.psql(database, f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
    url = postgres_database.replace("postgres@", f"{role}@", 1)
    graph = ConnectionGraph(all_connected=True)
    async with running_service(service_settings(url), graph, "postgres") as svc:
        alice, bob = unique("alice"), unique("bob")
        async with devices(svc, alice) as [a]:
            created = await a.call("createConversation", {"participantId": bob})
            synced = await a.call("syncMessages", {})
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{svc.url}/readyz")
    assert created["error"]["code"] == "UNAVAILABLE", created
    assert synced["error"]["code"] == "UNAVAILABLE", synced
    assert ready.status_code == 503


async def test_a_request_that_finds_the_database_gone_turns_readiness_at_once(
    pg_svc: RunningService, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pooled connections terminated by an administrator (SQLSTATE 57P01) and used without a
    ping fail the request as ``UNAVAILABLE``; /readyz says 503 from that moment, before the next
    periodic check, and recovers once a ping succeeds."""
    monkeypatch.setattr(db, "IDLE_BEFORE_PING_SECONDS", 3600.0)  # never ping on checkout
    alice = unique("alice")
    database = pg_svc.settings.database_url.rsplit("/", 1)[1]
    terminate = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )
    async with devices(pg_svc, alice) as [a]:
        assert (await a.call("syncMessages", {}))["ok"]
        await asyncio.to_thread(postgres_server.psql, "postgres", terminate)
        replies = [await a.call("syncMessages", {}) for _ in range(3)]
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{pg_svc.url}/readyz")
            await pg_svc.service.check_readiness()
            again = await http.get(f"{pg_svc.url}/readyz")
    failed = [r for r in replies if not r["ok"]]
    assert failed, "the test needs a request that met a terminated connection"
    assert {r["error"]["code"] for r in failed} == {"UNAVAILABLE"}
    assert ready.status_code == 503
    assert again.status_code == 200


async def test_a_history_page_that_meets_a_cut_connection_is_unavailable_and_the_next_is_served(
    pg_svc: RunningService, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """History pages are fetched by asyncpg itself (``store.driver_fetch``), past SQLAlchemy's
    cursor: a connection the database cut must still fail the call as ``UNAVAILABLE`` (not
    ``INTERNAL``) and be dropped from the pool, so the pages after it are served."""
    monkeypatch.setattr(db, "IDLE_BEFORE_PING_SECONDS", 3600.0)  # never ping on checkout
    alice, bob = unique("alice"), unique("bob")
    pg_svc.connect_users((alice, bob))
    async with devices(pg_svc, alice) as [a]:
        conversation = await open_conversation(pg_svc, a, bob)
        await a.ok("sendMessage", {"conversationId": conversation, "content": "hi"})
    request = pb.GetMessageHistoryRequest(conversation_id=conversation, page_size=10)
    metadata = [("authorization", f"Bearer {pg_svc.token(alice)}")]
    async with grpc.aio.insecure_channel(pg_svc.grpc_target) as channel:
        stub = pb_grpc.MessagingServiceStub(channel)
        assert len((await stub.GetMessageHistory(request, metadata=metadata)).messages) == 1
        await asyncio.to_thread(postgres_server.psql, "postgres", _terminate(pg_svc))
        codes: list[grpc.StatusCode] = []
        for _ in range(2 * pg_svc.settings.database_pool_size + 2):
            try:
                page = await stub.GetMessageHistory(request, metadata=metadata)
            except grpc.aio.AioRpcError as e:
                codes.append(e.code())
                continue
            assert [m.content for m in page.messages] == ["hi"]
            break
        else:
            raise AssertionError(f"no page served after the cut: {codes}")
    assert codes, "the test needs a call that met a terminated connection"
    assert set(codes) == {grpc.StatusCode.UNAVAILABLE}


def _terminate(svc: RunningService) -> str:
    database = svc.settings.database_url.rsplit("/", 1)[1]
    return (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )
