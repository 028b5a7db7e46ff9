"""A user's channel carries their events only while another replica holds one of their sockets.

Every event about a message goes to its author's log as well as its recipients': the author's
other devices hear of it. When all of the author's sockets are on the sending replica, those
devices are served locally, and publishing the event on the author's channel would only come
back to the sender as its own echo. The replica skips it, and learns of a socket elsewhere from
the greeting the other replica publishes on the channel before that socket's handshake reads the
log position (``Delivery.watch``), so the new device still gets every later event live.
"""

from __future__ import annotations

import asyncio
import time

from tests.support.replicas import Cluster, Replica, devices_on, logs_on_failure
from tests.support.service import Device, unique

PUBLISHED = 'messaging_backplane_published_total{outcome="published"}'
HEALED = "messaging_delivery_healed_total"
KEPT_LOCAL = "messaging_backplane_kept_local_total"


async def _settled(replica: Replica, key: str, *, at_least: float, quiet: float = 0.3) -> float:
    """The metric once it reached ``at_least`` and then stayed put for ``quiet`` seconds."""
    deadline = time.monotonic() + 5.0
    value = await replica.metric(key)
    while value < at_least:
        assert time.monotonic() < deadline, f"{key} on {replica.name} stuck at {value}"
        await asyncio.sleep(0.05)
        value = await replica.metric(key)
    while True:
        await asyncio.sleep(quiet)
        again = await replica.metric(key)
        if again == value:
            return value
        value = again


async def _send(device: Device, conversation: str, content: str) -> dict[str, object]:
    sent: dict[str, object] = await device.ok(
        "sendMessage", {"conversationId": conversation, "content": content}
    )
    return sent


async def test_events_of_a_user_held_by_one_replica_are_not_published_on_their_channel(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start(2)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, b)) as [a1, b1]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            before = await _settled(a, PUBLISHED, at_least=0)
            kept = await a.metric(KEPT_LOCAL)
            sent = [await _send(a1, conversation, f"m{i}") for i in range(10)]
            assert [await b1.next("newMessage") for _ in sent] == sent
            # Bob's copies cross to b; Alice's own stay on a, where her only socket is.
            assert await _settled(a, PUBLISHED, at_least=before + 10) == before + 10
            assert await a.metric(KEPT_LOCAL) == kept + 10


async def test_a_device_that_joins_on_another_replica_gets_the_users_own_events_live(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start(2)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, a)) as [a1, b1]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            first = await _send(a1, conversation, "before")
            assert await b1.next("newMessage") == first
            async with devices_on(cluster, (alice, b)) as [a2]:
                healed = await b.metric(HEALED)
                sent = [await _send(a1, conversation, f"m{i}") for i in range(5)]
                assert [await a2.next("newMessage") for _ in sent] == sent
                await a2.nothing("newMessage", wait=0.5)
                assert await b.metric(HEALED) == healed  # live, not filled from the log


async def test_once_the_other_replicas_socket_leaves_the_users_events_stay_local_again(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start(2)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, a)) as [a1, b1]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            async with devices_on(cluster, (alice, b)) as [a2]:
                before = await _settled(a, PUBLISHED, at_least=0)
                sent = await _send(a1, conversation, "while two replicas hold alice")
                assert await a2.next("newMessage") == sent
                assert await b1.next("newMessage") == sent
                assert await _settled(a, PUBLISHED, at_least=before + 1) == before + 1
            # b says goodbye on alice's channel; a asks who is still there and hears no one.
            deadline = time.monotonic() + 5.0
            while True:
                before = await _settled(a, PUBLISHED, at_least=0)
                sent = await _send(a1, conversation, "alone again?")
                assert await b1.next("newMessage") == sent
                if await _settled(a, PUBLISHED, at_least=before) == before:
                    break
                assert time.monotonic() < deadline, "a kept publishing alice's events"


async def test_devices_joining_elsewhere_while_the_user_sends_miss_nothing_and_need_no_healing(
    cluster: Cluster,
) -> None:
    """The race the greeting closes: a send committed just after a joining socket read its
    position must still be published for it, so nothing reaches it late from the log."""
    a, b, c = await cluster.start(3)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, a)) as [a1, _]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            healed = {r.name: await r.metric(HEALED) for r in (b, c)}
            sending = True
            sent: list[dict[str, object]] = []

            async def keep_sending() -> None:
                while sending:  # about 50 a second: within the send limit's burst of 100
                    sent.append(await _send(a1, conversation, f"m{len(sent)}"))
                    await asyncio.sleep(0.02)

            sender = asyncio.create_task(keep_sending())
            joined: list[Device] = []
            try:
                for round_ in range(6):
                    replica = (b, c)[round_ % 2]
                    device = Device(replica.url, cluster.token(alice))
                    await device.connect()
                    joined.append(device)
                    await asyncio.sleep(0.15)
                await asyncio.sleep(0.3)
            finally:
                sending = False
                await sender
            try:
                for device in joined:
                    got = device.drain("newMessage")
                    while not got or got[-1] != sent[-1]:
                        got.append(await device.next("newMessage"))
                    # Everything from some message on, in order, with no gap (each device
                    # connected while sends were in flight, so its first one may be either).
                    start = sent.index(got[0])
                    assert got == sent[start:], f"{len(got)} of {len(sent) - start}"
                for replica in (b, c):
                    assert await replica.metric(HEALED) == healed[replica.name]
            finally:
                await asyncio.gather(*(d.disconnect() for d in joined))
