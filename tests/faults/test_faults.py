"""Faults under load: connected devices still get every message and change, once, in order.

Three real ``messaging serve`` replicas share real PostgreSQL and Redis; ten pairs of official
python-socketio clients talk across replicas at a moderate rate (the machine is shared) while one
fault is injected. Each test asserts what the contract promises:

- every acknowledged message is stored exactly once;
- every device that stayed connected ends with every message and every status change exactly
  once, in order, without reconnecting; devices of a replica that died reconnect elsewhere and
  catch up with ``syncMessages {since}`` from the last token they received;
- every replica that kept running is ready again within 5 s of the fault ending;
- failed sends carry only contract codes (the clients retry them with the same clientMessageId).

Each test prints one line of the fault table (messages missing at connected recipients when the
load stopped, time from the fault's end until every message acknowledged before it had reached
its recipient, time until every replica was ready). ``MESSAGING_FAULT_REPORT=<file>`` also
appends them to a file as JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from messaging.errors import ACK_CODES
from tests.faults.traffic import RETRYABLE, Pair, Traffic
from tests.support.replicas import Cluster, Replica, logs_on_failure
from tests.support.servers import PostgresServer

PAIRS = 10
RATE = 60.0  # messages per second, all pairs together
WARMUP_SECONDS = 3.0
AFTER_SECONDS = 3.0
HEAL_TIMEOUT_SECONDS = 30.0
READY_WITHIN_SECONDS = 5.0

# Injects the fault and returns when it has ended: the replicas that died (their devices moved).
Fault = Callable[[Traffic, list[Replica]], Awaitable[list[Replica]]]


@dataclass
class Outcome:
    fault: str
    acked: int
    # Acknowledged messages their recipient did not have when the load stopped, and (for good)
    # after waiting for the healing.
    missing_when_stopped: int
    missing_for_good: int
    healed_after_seconds: float
    # The longest a message took from its ack to its (connected) recipient, over the whole run.
    worst_delivery_seconds: float
    ready_after_seconds: float
    failed_sends: dict[str, int]


async def _until(check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            return float("inf")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _ready_after(replicas: list[Replica], timeout: float) -> float:
    started = time.monotonic()

    async def one(replica: Replica) -> None:
        while True:
            with contextlib.suppress(Exception):
                status, _ = await replica.readyz()
                if status == 200:
                    return
            if time.monotonic() - started > timeout:
                return
            await asyncio.sleep(0.1)

    await asyncio.gather(*(one(r) for r in replicas))
    return time.monotonic() - started


async def _stored(cluster: Cluster, traffic: Traffic) -> tuple[dict[str, int], dict[str, set[str]]]:
    """How often each acked message is stored, and each conversation's read messages."""
    conn = await asyncpg.connect(cluster.database_url)
    try:
        ids = [i for pair in traffic.pairs for i, _ in pair.acked]
        rows = await conn.fetch(
            "SELECT m.id::text AS id, (SELECT count(*) FROM messages d WHERE d.author_id = "
            "m.author_id AND d.client_message_id = m.client_message_id) AS copies "
            "FROM messages m WHERE m.id = ANY($1::uuid[])",
            ids,
        )
        read = await conn.fetch(
            "SELECT conversation_id::text AS c, id::text AS id FROM messages "
            "WHERE conversation_id = ANY($1::uuid[]) AND status = 'read'",
            [pair.conversation for pair in traffic.pairs],
        )
    finally:
        await conn.close()
    by_conversation: dict[str, set[str]] = {}
    for row in read:
        by_conversation.setdefault(row["c"], set()).add(row["id"])
    return {row["id"]: row["copies"] for row in rows}, by_conversation


def _read_statuses_complete(traffic: Traffic, read: dict[str, set[str]]) -> bool:
    return all(
        {i for i, s in pair.sender.statuses if s == "read"} >= read.get(pair.conversation, set())
        for pair in traffic.pairs
        if pair.sender.reconnects == 0
    )


def _worst_delivery(traffic: Traffic) -> float:
    worst = 0.0
    for pair in traffic.pairs:
        if pair.recipient.reconnects:
            continue
        arrived = dict(pair.recipient.received)
        for message_id, acked_at in pair.acked:
            if message_id in arrived:
                worst = max(worst, arrived[message_id] - acked_at)
    return worst


def _check_pair(pair: Pair, read: set[str]) -> None:
    acked = [i for i, _ in pair.acked]
    order = {message_id: index for index, message_id in enumerate(acked)}
    live = [i for i, _ in pair.recipient.received]
    assert len(live) == len(set(live)), f"{pair.recipient.user} got a message twice"
    if pair.recipient.reconnects == 0:
        assert live == acked, f"{pair.recipient.user}: not every message once, in order"
    else:
        assert pair.recipient.has() >= set(acked), f"{pair.recipient.user} misses messages"
    reads = [i for i, s in pair.sender.statuses if s == "read"]
    assert len(reads) == len(set(reads)), f"{pair.sender.user} got a read receipt twice"
    assert [order[i] for i in reads] == sorted(order[i] for i in reads), "receipts out of order"
    if pair.sender.reconnects == 0:
        assert set(reads) == read, f"{pair.sender.user}: not every read receipt"


async def run(cluster: Cluster, name: str, fault: Fault) -> Outcome:
    replicas = await cluster.start(3)
    traffic = await Traffic.start(cluster, replicas, pairs=PAIRS, rate=RATE)
    with logs_on_failure(cluster):
        try:
            await asyncio.sleep(WARMUP_SECONDS)
            assert sum(len(p.acked) for p in traffic.pairs) > PAIRS, "no traffic before the fault"
            dead = await fault(traffic, replicas)
            ended = time.monotonic()
            running = [r for r in replicas if r not in dead]
            ready_after, healed_after = await asyncio.gather(
                _ready_after(running, timeout=HEAL_TIMEOUT_SECONDS),
                _until(lambda: traffic.missing(acked_before=ended) == 0, HEAL_TIMEOUT_SECONDS),
            )
            for replica in dead:
                replica.start()
                await replica.wait_ready(timeout=30)
            await asyncio.sleep(AFTER_SECONDS)
            await traffic.stop()
            missing_when_stopped = traffic.missing()
            for pair in traffic.pairs:
                while pair.recipient.received and pair.read_up_to != pair.recipient.received[-1][0]:
                    await traffic.mark_read(pair)
            await _until(lambda: traffic.missing() == 0, HEAL_TIMEOUT_SECONDS)
            missing = traffic.missing()
            copies, read = await _stored(cluster, traffic)
            await _until(lambda: _read_statuses_complete(traffic, read), HEAL_TIMEOUT_SECONDS)
        finally:
            await traffic.close()
        acked = sum(len(p.acked) for p in traffic.pairs)
        outcome = Outcome(
            name,
            acked,
            missing_when_stopped,
            missing,
            round(healed_after, 2),
            round(_worst_delivery(traffic), 2),
            round(ready_after, 2),
            dict(traffic.failures),
        )
        print(f"\nFAULT {json.dumps(asdict(outcome))}")
        report = os.environ.get("MESSAGING_FAULT_REPORT")
        if report:
            with Path(report).open("a") as out:  # noqa: ASYNC230 - one line, once per test
                out.write(json.dumps(asdict(outcome)) + "\n")

        assert missing == 0, f"{missing} acknowledged messages never reached their recipient"
        assert len(copies) == acked, "an acknowledged message is not stored"
        assert set(copies.values()) == {1}, "a message is stored twice"
        for pair in traffic.pairs:
            _check_pair(pair, read.get(pair.conversation, set()))
        assert ready_after <= READY_WITHIN_SECONDS, f"replicas ready only after {ready_after}s"
        assert healed_after < float("inf")
        unexpected = set(traffic.failures) - RETRYABLE - {"NO_ANSWER"}
        assert not unexpected, f"sends failed with {unexpected}"
        assert set(traffic.failures) - {"NO_ANSWER"} <= ACK_CODES
        return outcome


async def _move_devices(traffic: Traffic, dead: Replica, to: Replica) -> None:
    """The clients of a replica that went away reconnect to another and sync from their token."""
    peers = [p for pair in traffic.pairs for p in (pair.sender, pair.recipient)]
    moving = [p for p in peers if p.replica is dead]
    await asyncio.gather(*(asyncio.wait_for(p.lost.wait(), 30) for p in moving))
    await asyncio.gather(*(p.resume_on(to) for p in moving))


# --- the faults ---------------------------------------------------------------------------------


async def test_a_redis_restart_loses_no_message_at_connected_devices(cluster: Cluster) -> None:
    async def fault(traffic: Traffic, replicas: list[Replica]) -> list[Replica]:
        assert cluster.redis is not None
        cluster.redis.stop()
        await asyncio.sleep(5)
        cluster.redis.start()
        return []

    await run(cluster, "redis stopped 5 s, restarted", fault)


async def test_killed_pubsub_connections_lose_no_message(cluster: Cluster) -> None:
    async def fault(traffic: Traffic, replicas: list[Replica]) -> list[Replica]:
        assert cluster.redis is not None
        cluster.redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        await asyncio.sleep(1)
        cluster.redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        return []

    await run(cluster, "CLIENT KILL TYPE pubsub twice", fault)


async def test_a_replica_frozen_for_ten_seconds_catches_up_its_devices(cluster: Cluster) -> None:
    async def fault(traffic: Traffic, replicas: list[Replica]) -> list[Replica]:
        replicas[1].signal(signal.SIGSTOP)
        await asyncio.sleep(10)
        replicas[1].signal(signal.SIGCONT)
        return []

    await run(cluster, "replica SIGSTOP 10 s, SIGCONT", fault)


async def test_a_killed_replicas_devices_reconnect_and_nothing_is_lost(cluster: Cluster) -> None:
    async def fault(traffic: Traffic, replicas: list[Replica]) -> list[Replica]:
        replicas[2].signal(signal.SIGKILL)
        await replicas[2].wait_exit(10)
        await _move_devices(traffic, replicas[2], replicas[0])
        return [replicas[2]]

    await run(cluster, "replica SIGKILL", fault)


async def test_a_replica_that_shuts_down_hands_its_devices_over(cluster: Cluster) -> None:
    async def fault(traffic: Traffic, replicas: list[Replica]) -> list[Replica]:
        replicas[2].signal(signal.SIGTERM)
        await _move_devices(traffic, replicas[2], replicas[0])
        await replicas[2].wait_exit(20)
        return [replicas[2]]

    await run(cluster, "replica SIGTERM", fault)


async def test_a_postgresql_restart_loses_nothing_and_fails_sends_only_retryably(
    cluster: Cluster, postgres_server: PostgresServer
) -> None:
    async def fault(traffic: Traffic, replicas: list[Replica]) -> list[Replica]:
        async with postgres_server.stopped():
            await asyncio.sleep(3)
        return []

    await run(cluster, "PostgreSQL restarted (3 s down)", fault)


async def test_the_connections_service_down_fails_sends_retryably_and_loses_nothing(
    cluster: Cluster,
) -> None:
    async def fault(traffic: Traffic, replicas: list[Replica]) -> list[Replica]:
        await cluster.stop_connections()
        await asyncio.sleep(5)
        await cluster.start_connections()
        return []

    await run(cluster, "Connections service down 5 s", fault)
