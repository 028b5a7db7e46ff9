"""What users wrote and who they are stays out of the logs, also when the database fails.

A real ``messaging serve`` process on its own PostgreSQL database, made to refuse some messages
with a CHECK constraint the test adds (a database error that is not about connectivity, the kind
that used to be logged with its SQL statement and parameters: other users' messages, raw ids).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from messaging.db import migrate
from messaging.dev_connections import ConnectionGraph, start_connections_server
from messaging.settings import Settings
from tests.support.replicas import Cluster, logs_on_failure
from tests.support.servers import PostgresServer
from tests.support.service import JWT_SECRET, Device, unique

MARKER = "refused-by-the-test"
HASH_SECRET = "a-log-hash-secret-for-the-test"


@pytest_asyncio.fixture
async def refusing_cluster(postgres_server: PostgresServer) -> AsyncIterator[Cluster]:
    """A deployment whose database refuses any message containing ``MARKER``."""
    name = f"refusing_{uuid.uuid4().hex[:8]}"
    url = postgres_server.create_database(name)
    await asyncio.to_thread(migrate, Settings(database_url=url, jwt_secret=JWT_SECRET))
    postgres_server.psql(
        name,
        f"ALTER TABLE messages ADD CONSTRAINT forced_refusal CHECK (content NOT LIKE '%{MARKER}%')",
    )
    server, port = await start_connections_server(ConnectionGraph(all_connected=True))
    deployment = Cluster(
        database_url=url.replace("postgresql+asyncpg://", "postgresql://"),
        redis=None,
        connections_address=f"127.0.0.1:{port}",
        graph=ConnectionGraph(all_connected=True),
        workdir=Path(tempfile.mkdtemp(prefix="messaging-redaction-")),
    )
    try:
        yield deployment
    finally:
        deployment.stop()
        await server.stop(0)


async def test_a_database_error_logs_its_class_and_sqlstate_never_the_sql_or_the_values(
    refusing_cluster: Cluster,
) -> None:
    [replica] = await refusing_cluster.start(1, log_user_hash_secret=HASH_SECRET)
    attacker, victim = unique("attacker"), unique("victim")
    pairs = [(unique("bystander"), unique("friend")) for _ in range(20)]
    secret_text = f"{MARKER} the attacker's words"
    with logs_on_failure(refusing_cluster):
        users = [attacker, *(b for b, _ in pairs)]
        connected = [Device(replica.url, refusing_cluster.token(u)) for u in users]
        await asyncio.gather(*(d.connect() for d in connected))
        try:
            bad, good = connected[0], connected[1:]
            hostile = (await bad.ok("createConversation", {"participantId": victim}))["id"]
            quiet = [
                (await d.ok("createConversation", {"participantId": friend}))["id"]
                for d, (_, friend) in zip(good, pairs, strict=True)
            ]

            async def bystander(i: int) -> Any:
                return await good[i % 20].call(
                    "sendMessage",
                    {"conversationId": quiet[i % 20], "content": f"private words {i}"},
                    timeout=15,
                )

            replies = await asyncio.gather(
                *(
                    bad.call("sendMessage", {"conversationId": hostile, "content": secret_text})
                    for _ in range(8)
                ),
                *(bystander(i) for i in range(100)),
            )
        finally:
            await asyncio.gather(*(d.disconnect() for d in connected), return_exceptions=True)
        # Only the refused rows fail, and their senders see a generic INTERNAL.
        assert [r["error"]["code"] for r in replies[:8]] == ["INTERNAL"] * 8
        assert all(r["error"]["message"] == "internal error" for r in replies[:8])
        assert [r for r in replies[8:] if not r["ok"]] == []

        log = replica.log_path.read_text()
        assert "sqlstate=23514" in log  # check_violation: the class of error is there
        for secret in (MARKER, "private words", "INSERT INTO", "[parameters", "unnest("):
            assert secret not in log, secret
        for user in (attacker, victim, *(u for pair in pairs for u in pair)):
            assert user not in log, user
        # Users appear as a keyed hash: the configured key's, not a plain digest of the id.
        keyed = hmac.new(HASH_SECRET.encode(), attacker.encode(), hashlib.sha256).hexdigest()
        assert keyed[:16] in log
        assert hashlib.blake2s(attacker.encode(), digest_size=6).hexdigest() not in log
