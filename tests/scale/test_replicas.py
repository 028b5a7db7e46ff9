"""Several replicas behind one address: every event reaches every device, wherever it is."""

from __future__ import annotations

import asyncio
import signal
import time

from tests.support.replicas import Cluster, Replica, devices_on, logs_on_failure
from tests.support.service import Device, unique


async def until_unready(replica: Replica, within: float = 5.0) -> dict[str, object]:
    """Readiness is re-checked every second: wait for it to report the outage."""
    deadline = time.monotonic() + within
    while True:
        status, body = await replica.readyz()
        if status == 503:
            assert any("redis" in p for p in body["problems"]), body
            return body
        assert time.monotonic() < deadline, f"{replica.name} still ready: {body}"
        await asyncio.sleep(0.1)


async def test_a_message_sent_on_one_replica_reaches_devices_on_the_others_once_each(
    cluster: Cluster,
) -> None:
    a, b, c = await cluster.start(3)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        placed = (alice, a), (bob, b), (bob, c), (alice, c)
        async with devices_on(cluster, *placed) as [a1, b1, b2, a2]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            sent = [
                await a1.ok("sendMessage", {"conversationId": conversation, "content": f"m{i}"})
                for i in range(5)
            ]
            for device in (b1, b2, a2):
                got = [await device.next("newMessage") for _ in sent]
                assert got == sent
                await device.nothing("newMessage", wait=0.5)
            await a1.nothing("newMessage", wait=0)


async def test_typing_and_status_events_cross_replicas(cluster: Cluster) -> None:
    a, b = await cluster.start(2)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, b), (alice, b)) as [a1, b1, a2]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            await b1.ok("typing", {"conversationId": conversation, "isTyping": True})
            assert (await a1.next("typing"))["userId"] == bob
            message = await a1.ok("sendMessage", {"conversationId": conversation, "content": "x"})
            await b1.next("newMessage")
            await b1.ok(
                "markRead", {"conversationId": conversation, "upToMessageId": message["id"]}
            )
            for device in (a1, a2):
                status = await device.next("messageStatus")
                assert status["messageIds"] == [message["id"]]
                assert status["status"] == "read"


async def test_a_replica_receives_only_the_events_of_its_own_users(cluster: Cluster) -> None:
    """Fan-out is targeted: a replica with none of the recipients' sockets decodes nothing."""
    a, b, bystander = await cluster.start(3)
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, b), (carol, bystander)) as [a1, b1, _]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            for i in range(20):
                await a1.ok("sendMessage", {"conversationId": conversation, "content": str(i)})
            for _ in range(20):
                await b1.next("newMessage")
            received = "messaging_backplane_received_total"
            assert await b.metric(received) == 20
            assert await bystander.metric(received) == 0
            assert await a.metric(received) == 0  # its own events are delivered locally


async def test_killing_a_replica_clears_its_users_presence_within_the_bound(
    cluster: Cluster,
) -> None:
    a, doomed = await cluster.start(2)
    alice, bob = unique("alice"), unique("bob")
    bound = 2.0 + 0.5  # MESSAGING_REDIS_REPLICA_TTL_SECONDS + MESSAGING_REDIS_HEARTBEAT_SECONDS
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, doomed)) as [a1, _]:
            await a1.ok("createConversation", {"participantId": bob})
            presence = await a1.ok("getPresence", {"userIds": [bob]})
            assert presence["presence"][bob]["online"] is True
            killed_at = time.monotonic()
            doomed.signal(signal.SIGKILL)
            while True:
                presence = (await a1.ok("getPresence", {"userIds": [bob]}))["presence"][bob]
                if not presence["online"]:
                    break
                assert time.monotonic() - killed_at < bound + 1.0, "still online past the bound"
                await asyncio.sleep(0.1)
            elapsed = time.monotonic() - killed_at
    assert presence["lastSeenAt"] is not None
    print(f"presence cleared {elapsed:.2f}s after SIGKILL (bound {bound}s)")
    assert elapsed <= bound + 1.0


async def test_a_clean_shutdown_takes_the_replicas_users_offline_at_once(cluster: Cluster) -> None:
    a, leaving = await cluster.start(2)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, leaving)) as [a1, _]:
            await a1.ok("createConversation", {"participantId": bob})
            leaving.stop()
            presence = (await a1.ok("getPresence", {"userIds": [bob]}))["presence"][bob]
    assert presence["online"] is False


async def test_redis_restart_mid_conversation_loses_no_acknowledged_message(
    cluster: Cluster,
) -> None:
    assert cluster.redis is not None
    a, b = await cluster.start(2)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, b)) as [a1, b1]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            first = await a1.ok("sendMessage", {"conversationId": conversation, "content": "0"})
            assert await b1.next("newMessage") == first
            assert await b.metric("messaging_backplane_listener_up") == 1

            cluster.redis.stop()
            acked_while_down = []
            for i in range(5):
                reply = await a1.ok(
                    "sendMessage", {"conversationId": conversation, "content": f"d{i}"}
                )
                acked_while_down.append(reply["id"])
            await until_unready(a)
            await b1.disconnect()  # the recipient drops while Redis is away

            cluster.redis.start()
            await a.wait_ready(timeout=20)
            await b.wait_ready(timeout=20)
            assert await b.metric("messaging_backplane_listener_up") == 1
            assert await b.metric("messaging_backplane_listener_restarts_total") >= 1

            async with devices_on(cluster, (bob, b)) as [b2]:
                caught_up = await b2.ok("syncMessages", {"after": first["id"]})
                assert [m["id"] for m in caught_up["messages"]] == acked_while_down
                after = await a1.ok(
                    "sendMessage", {"conversationId": conversation, "content": "back"}
                )
                assert await b2.next("newMessage", timeout=10) == after


async def test_local_delivery_keeps_working_while_redis_is_down(cluster: Cluster) -> None:
    assert cluster.redis is not None
    [a] = await cluster.start(1)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, a)) as [a1, b1]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            cluster.redis.stop()
            try:
                sent = await a1.ok("sendMessage", {"conversationId": conversation, "content": "hi"})
                assert await b1.next("newMessage") == sent
                presence = await a1.call("getPresence", {"userIds": [bob]})
                assert presence["error"]["code"] == "UNAVAILABLE"
            finally:
                cluster.redis.start()


async def test_the_listener_resubscribes_when_redis_drops_it_as_a_slow_subscriber(
    cluster: Cluster,
) -> None:
    """Redis disconnects pub/sub clients whose output buffer overflows (client-output-buffer-
    limit pubsub); python-socketio's listener was known to die silently then. Ours must notice,
    resubscribe, and say so in its metrics."""
    assert cluster.redis is not None
    a, b = await cluster.start(2)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, b)) as [a1, b1]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            restarts = await b.metric("messaging_backplane_listener_restarts_total")
            cluster.redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
            deadline = time.monotonic() + 10
            while await b.metric("messaging_backplane_listener_restarts_total") == restarts:
                assert time.monotonic() < deadline, "the listener never noticed"
                await asyncio.sleep(0.1)
            while await b.metric("messaging_backplane_listener_up") != 1:
                assert time.monotonic() < deadline, "the listener never came back"
                await asyncio.sleep(0.1)
            sent = await a1.ok("sendMessage", {"conversationId": conversation, "content": "again"})
            assert await b1.next("newMessage") == sent


async def test_killing_a_replica_mid_traffic_loses_no_acknowledged_message(
    cluster: Cluster,
) -> None:
    """An ack is only sent after the commit, so whatever a crashed replica acked is stored."""
    a, doomed = await cluster.start(2)
    pairs = [(unique("alice"), unique("bob")) for _ in range(10)]
    acked: list[str] = []
    with logs_on_failure(cluster):
        async with devices_on(cluster, *((alice, doomed) for alice, _ in pairs)) as senders:
            conversations = [
                (await s.ok("createConversation", {"participantId": bob}))["id"]
                for s, (_, bob) in zip(senders, pairs, strict=True)
            ]

            async def send(device: Device, conversation: str) -> None:
                for i in range(1000):
                    reply = await device.call(
                        "sendMessage", {"conversationId": conversation, "content": str(i)}
                    )
                    acked.append(reply["data"]["id"])

            tasks = [
                asyncio.create_task(send(d, c)) for d, c in zip(senders, conversations, strict=True)
            ]
            await asyncio.sleep(1.0)
            doomed.signal(signal.SIGKILL)
            await asyncio.gather(*tasks, return_exceptions=True)
        assert len(acked) > 50, "the replica must have acked traffic before it died"
        async with devices_on(cluster, *((bob, a) for _, bob in pairs)) as readers:
            stored: set[str] = set()
            for reader in readers:
                page = await reader.ok("syncMessages", {"limit": 500})
                while True:
                    stored.update(m["id"] for m in page["messages"])
                    if not page["hasMore"]:
                        break
                    page = await reader.ok(
                        "syncMessages", {"after": page["messages"][-1]["id"], "limit": 500}
                    )
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages were lost"
