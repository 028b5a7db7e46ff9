"""History and conversation lists served by a real PostgreSQL streaming replica, and never
missing a change a client was acknowledged: replay paused on the replica makes the reads fall
back to the primary (or wait for replay); sync stays on the primary; a replica that is down is
never an error for clients."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import grpc
import pytest_asyncio
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from messaging import db
from messaging.dev_connections import ConnectionGraph
from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from messaging.read_replica import REASONS, ReplicaReads
from messaging.settings import Settings
from tests.support.pg_replica import PostgresReplica
from tests.support.servers import PostgresServer
from tests.support.service import (
    JWT_SECRET,
    RunningService,
    devices,
    open_conversation,
    running_service,
    service_settings,
    unique,
)

Counts = dict[tuple[str, str, str], float]


def reads() -> Counts:
    """Every ``messaging_read_replica_reads_total`` series: (read, served_by, reason) -> count."""
    counts: Counts = {}
    for read in ("history", "conversations"):
        for served_by, reasons in REASONS.items():
            for reason in reasons:
                labels = {"read": read, "served_by": served_by, "reason": reason}
                value = REGISTRY.get_sample_value("messaging_read_replica_reads_total", labels)
                counts[(read, served_by, reason)] = value or 0.0
    return counts


def since(before: Counts) -> Counts:
    """What was counted after ``before`` (only the series that moved)."""
    return {key: n - before[key] for key, n in reads().items() if n != before[key]}


def served_by(delta: Counts, read: str) -> set[str]:
    return {where for (r, where, _), n in delta.items() if r == read and n > 0}


@contextmanager
def replay_paused(replica: PostgresReplica) -> Iterator[None]:
    replica.pause_replay()
    try:
        yield
    finally:
        replica.resume_replay()


@pytest_asyncio.fixture(scope="module")
async def replica_database(
    postgres_server: PostgresServer, postgres_replica: PostgresReplica
) -> str:
    """A migrated database of its own on the primary, replayed on the replica."""
    name = f"replica_{uuid.uuid4().hex[:8]}"
    url = postgres_server.create_database(name)
    await asyncio.to_thread(db.migrate, Settings(database_url=url, jwt_secret=JWT_SECRET))
    await asyncio.to_thread(postgres_replica.wait_caught_up)
    return name


@pytest_asyncio.fixture(scope="module")
async def graph() -> ConnectionGraph:
    return ConnectionGraph(all_connected=True)


@pytest_asyncio.fixture(scope="module")
async def replica_svc(
    replica_database: str,
    postgres_server: PostgresServer,
    postgres_replica: PostgresReplica,
    graph: ConnectionGraph,
) -> AsyncIterator[RunningService]:
    """A service reading history and conversation lists from the replica (waiting up to 1 s)."""
    settings = service_settings(
        postgres_server.dsn(replica_database),
        database_read_url=postgres_replica.dsn(replica_database),
        database_read_max_wait_ms=1000,
    )
    async with running_service(settings, graph, "postgres") as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def writer_svc(
    replica_database: str, postgres_server: PostgresServer, graph: ConnectionGraph
) -> AsyncIterator[RunningService]:
    """Another process of the same deployment, on the primary only (the user's other device)."""
    settings = service_settings(postgres_server.dsn(replica_database))
    async with running_service(settings, graph, "postgres") as running:
        yield running


def _ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in messages]


async def test_history_and_conversation_lists_are_served_by_the_replica_once_it_replayed(
    replica_svc: RunningService, postgres_replica: PostgresReplica
) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with devices(replica_svc, alice, bob) as [a, b]:
        conversation = await open_conversation(replica_svc, a, bob)
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": "hi"})
        await asyncio.to_thread(postgres_replica.wait_caught_up)
        before = reads()
        history = await b.ok("getMessageHistory", {"conversationId": conversation})
        listed = await b.ok("listConversations", {})
        delta = since(before)
    assert _ids(history["messages"]) == [sent["id"]]
    assert listed["conversations"][0]["lastMessage"]["id"] == sent["id"]
    assert served_by(delta, "history") == {"replica"}
    assert served_by(delta, "conversations") == {"replica"}


async def test_grpc_history_and_conversation_lists_are_served_by_the_replica(
    replica_svc: RunningService, postgres_replica: PostgresReplica
) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with devices(replica_svc, alice) as [a]:
        conversation = await open_conversation(replica_svc, a, bob)
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": "hi"})
    await asyncio.to_thread(postgres_replica.wait_caught_up)
    metadata = [("authorization", f"Bearer {replica_svc.token(bob)}")]
    before = reads()
    async with grpc.aio.insecure_channel(replica_svc.grpc_target) as channel:
        stub = pb_grpc.MessagingServiceStub(channel)
        history = await stub.GetMessageHistory(
            pb.GetMessageHistoryRequest(conversation_id=conversation), metadata=metadata
        )
        listed = await stub.ListConversations(pb.ListConversationsRequest(), metadata=metadata)
    delta = since(before)
    assert [m.id for m in history.messages] == [sent["id"]]
    assert listed.conversations[0].last_message.id == sent["id"]
    assert served_by(delta, "history") == {"replica"}
    assert served_by(delta, "conversations") == {"replica"}


async def test_a_message_acked_while_replay_is_paused_is_in_the_history_read_right_after(
    replica_svc: RunningService, postgres_replica: PostgresReplica, replica_database: str
) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with devices(replica_svc, alice, bob) as [a, b]:
        conversation = await open_conversation(replica_svc, a, bob)
        first = await a.ok("sendMessage", {"conversationId": conversation, "content": "one"})
        await asyncio.to_thread(postgres_replica.wait_caught_up)
        with replay_paused(postgres_replica):
            acked = await a.ok("sendMessage", {"conversationId": conversation, "content": "two"})
            before = reads()
            mine = await a.ok("getMessageHistory", {"conversationId": conversation})
            theirs = await b.ok("getMessageHistory", {"conversationId": conversation})
            listed = await a.ok("listConversations", {})
            delta = since(before)
            # The replica really is behind: it has the first message and not the acked one.
            on_replica = await asyncio.to_thread(
                postgres_replica.psql,
                replica_database,
                f"SELECT count(*) FROM messages WHERE conversation_id = '{conversation}'",
            )
    assert on_replica.strip() == "1"
    assert _ids(mine["messages"]) == [acked["id"], first["id"]]
    assert _ids(theirs["messages"]) == [acked["id"], first["id"]]
    assert listed["conversations"][0]["lastMessage"]["id"] == acked["id"]
    assert delta == {
        ("history", "primary", "lagging"): 2,
        ("conversations", "primary", "lagging"): 1,
    }


async def test_a_message_acked_by_another_process_is_in_the_history_read_on_this_one(
    replica_svc: RunningService, writer_svc: RunningService, postgres_replica: PostgresReplica
) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with (
        devices(writer_svc, alice) as [phone],
        devices(replica_svc, alice) as [laptop],
    ):
        conversation = await open_conversation(writer_svc, phone, bob)
        with replay_paused(postgres_replica):
            acked = await phone.ok("sendMessage", {"conversationId": conversation, "content": "x"})
            history = await laptop.ok("getMessageHistory", {"conversationId": conversation})
            listed = await laptop.ok("listConversations", {})
    assert _ids(history["messages"]) == [acked["id"]]
    assert listed["conversations"][0]["lastMessage"]["id"] == acked["id"]


async def test_sync_never_misses_a_message_acked_while_replay_is_paused(
    replica_svc: RunningService, postgres_replica: PostgresReplica
) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with devices(replica_svc, alice, bob) as [a, b]:
        conversation = await open_conversation(replica_svc, a, bob)
        first = await a.ok("sendMessage", {"conversationId": conversation, "content": "one"})
        token = (await b.ok("syncMessages", {}))["syncToken"]
        with replay_paused(postgres_replica):
            acked = await a.ok("sendMessage", {"conversationId": conversation, "content": "two"})
            before = reads()
            by_token = await b.ok("syncMessages", {"since": token})
            by_id = await b.ok("syncMessages", {"after": first["id"]})
            delta = since(before)
    assert _ids(by_token["messages"]) == [acked["id"]]
    assert _ids(by_id["messages"]) == [acked["id"]]
    assert delta == {}  # sync reads the primary, never the replica


async def test_with_the_replica_down_reads_fall_back_to_the_primary_without_errors(
    replica_svc: RunningService, postgres_replica: PostgresReplica
) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with devices(replica_svc, alice, bob) as [a, b]:
        conversation = await open_conversation(replica_svc, a, bob)
        await b.ok("getMessageHistory", {"conversationId": conversation})  # a pooled connection
        await asyncio.to_thread(postgres_replica.stop)
        try:
            before = reads()
            acked = await a.ok("sendMessage", {"conversationId": conversation, "content": "x"})
            history = [
                await b.ok("getMessageHistory", {"conversationId": conversation}) for _ in range(3)
            ]
            listed = await b.ok("listConversations", {})
            delta = since(before)
            up_while_down = REGISTRY.get_sample_value("messaging_read_replica_up")
        finally:
            await asyncio.to_thread(postgres_replica.start)
        # Back: reads return to the replica once its retry delay has passed.
        for _ in range(300):
            back = reads()
            await b.ok("getMessageHistory", {"conversationId": conversation})
            if served_by(since(back), "history") == {"replica"}:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("reads never returned to the replica after it came back")
    assert all(_ids(h["messages"]) == [acked["id"]] for h in history)
    assert listed["conversations"][0]["lastMessage"]["id"] == acked["id"]
    assert served_by(delta, "history") == {"primary"}
    assert served_by(delta, "conversations") == {"primary"}
    assert delta[("history", "primary", "replica_down")] >= 1
    assert up_while_down == 0
    assert REGISTRY.get_sample_value("messaging_read_replica_up") == 1


# --- the routing itself, on the real replica ---------------------------------------------------


async def _in_recovery(conn: AsyncConnection) -> bool:
    return bool((await conn.execute(text("SELECT pg_is_in_recovery()"))).scalar_one())


async def test_a_read_waits_for_replay_and_then_is_served_by_the_replica(
    replica_database: str, postgres_server: PostgresServer, postgres_replica: PostgresReplica
) -> None:
    primary = create_async_engine(postgres_server.dsn(replica_database))
    replica = ReplicaReads(
        replica=create_async_engine(postgres_replica.dsn(replica_database)),
        max_wait_seconds=120,
    )
    table = f"probe_{uuid.uuid4().hex[:8]}"
    try:
        async with primary.begin() as conn:
            await conn.execute(text(f"CREATE TABLE {table} (x int)"))
        await asyncio.to_thread(postgres_replica.wait_caught_up)

        async def work(conn: AsyncConnection) -> tuple[bool, int]:
            found = (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            return await _in_recovery(conn), int(found)

        with replay_paused(postgres_replica):
            async with primary.begin() as conn:
                await conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
            before = reads()
            read = asyncio.create_task(replica.read("history", primary.connect, work))
            await asyncio.sleep(0.5)
            still_waiting = not read.done()
        result = await read
        delta = since(before)
    finally:
        async with primary.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await primary.dispose()
        await replica.dispose()
    assert still_waiting  # replay paused: the committed row is not there yet
    assert result == (True, 1)  # answered by the standby, with the row
    assert delta == {("history", "replica", "waited"): 1}


async def test_a_read_url_that_is_not_a_standby_reads_the_primary(
    replica_database: str, postgres_server: PostgresServer
) -> None:
    """A promoted replica, or a primary named by mistake, no longer follows our primary."""
    primary = create_async_engine(postgres_server.dsn(replica_database))
    replica = ReplicaReads(
        replica=create_async_engine(postgres_server.dsn(replica_database)), max_wait_seconds=5
    )
    try:
        before = reads()
        in_recovery = await replica.read("conversations", primary.connect, _in_recovery)
        delta = since(before)
    finally:
        await primary.dispose()
        await replica.dispose()
    assert in_recovery is False
    assert delta == {("conversations", "primary", "not_a_standby"): 1}


async def test_a_read_arriving_while_a_bound_is_being_taken_waits_for_a_later_one(
    replica_database: str, postgres_server: PostgresServer, postgres_replica: PostgresReplica
) -> None:
    """The shared probe of the primary's position: a probe that began before a read arrived may
    predate a commit acknowledged before that read, so the read must not use it."""
    primary = create_async_engine(postgres_server.dsn(replica_database))
    replica = ReplicaReads(
        replica=create_async_engine(postgres_replica.dsn(replica_database)),
        max_wait_seconds=0.2,
    )
    table = f"probe_{uuid.uuid4().hex[:8]}"
    gate, first_probe_done = asyncio.Event(), asyncio.Event()

    @asynccontextmanager
    async def held_after_use() -> AsyncIterator[AsyncConnection]:
        """The primary, but the first probe hangs on after its statement, still in flight."""
        async with primary.connect() as conn:
            yield conn
        if not gate.is_set():
            first_probe_done.set()
            await gate.wait()

    async def count(conn: AsyncConnection) -> int:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())

    try:
        async with primary.begin() as conn:
            await conn.execute(text(f"CREATE TABLE {table} (x int)"))
        earlier = asyncio.create_task(replica.read("history", held_after_use, count))
        await first_probe_done.wait()
        # The replica has everything up to the first probe's position, and no more from now on.
        await asyncio.to_thread(postgres_replica.wait_caught_up)
        with replay_paused(postgres_replica):
            async with primary.begin() as conn:
                await conn.execute(text(f"INSERT INTO {table} VALUES (1)"))  # acknowledged
            later = asyncio.create_task(replica.read("history", held_after_use, count))
            await asyncio.sleep(0.2)  # the later read is waiting for its bound
            gate.set()
            seen_later = await later
            await earlier
    finally:
        async with primary.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await primary.dispose()
        await replica.dispose()
    assert seen_later == 1
