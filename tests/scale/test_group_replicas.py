"""Groups across replicas: every member's devices get the group's events wherever they are."""

from __future__ import annotations

from tests.support.replicas import Cluster, devices_on, logs_on_failure
from tests.support.service import unique


async def test_a_groups_message_reaches_every_members_devices_on_every_replica(
    cluster: Cluster,
) -> None:
    a, b, c = await cluster.start(3)
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    cluster.graph.connect(alice, bob)
    cluster.graph.connect(alice, carol)
    with logs_on_failure(cluster):
        placed = ((alice, a), (bob, b), (bob, c), (carol, c), (alice, b))
        async with devices_on(cluster, *placed) as [a1, b1, b2, c1, a2]:
            group = await a1.ok(
                "createConversation", {"participantIds": [bob, carol], "title": "T"}
            )
            for device in (b1, b2, c1, a2):
                assert (await device.next("conversationUpdated"))["change"]["type"] == "created"
            sent = await b1.ok("sendMessage", {"conversationId": group["id"], "content": "hi"})
            for device in (a1, a2, b2, c1):
                assert (await device.next("newMessage"))["id"] == sent["id"]
            await c1.ok("markRead", {"conversationId": group["id"], "upToMessageId": sent["id"]})
            status = await b2.next("messageStatus")
            assert (status["userId"], status["status"]) == (carol, "read")
            await c1.ok("leaveConversation", {"conversationId": group["id"]})
            for device in (a1, a2, b1, b2):
                assert (await device.next("conversationUpdated"))["change"]["type"] == "left"
            await a1.ok("sendMessage", {"conversationId": group["id"], "content": "after"})
            await b1.next("newMessage")
            await c1.nothing("newMessage", wait=0.5)
