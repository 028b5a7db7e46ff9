"""Edits, deletes and reactions made on one replica reach devices on the others, once each."""

from __future__ import annotations

from tests.support.replicas import Cluster, devices_on, logs_on_failure
from tests.support.service import unique


async def test_changes_made_on_one_replica_reach_devices_on_the_others_once_each(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start(2)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, b), (alice, b)) as [a1, b1, a2]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            sent = await a1.ok("sendMessage", {"conversationId": conversation, "content": "x"})
            for device in (b1, a2):
                await device.next("newMessage")
            edited = await a1.ok("editMessage", {"messageId": sent["id"], "content": "y"})
            await b1.ok("setReaction", {"messageId": sent["id"], "emoji": "👍", "active": True})
            deleted = await a1.ok("deleteMessage", {"messageId": sent["id"]})
            for device in (b1, a2):
                assert await device.next("messageUpdated") == edited
                await device.nothing("messageUpdated", wait=0)
            for device in (a1, a2):
                reaction = await device.next("messageReaction")
                assert reaction["reactions"] == {"👍": [bob]}
            for device in (b1, a2):
                event = await device.next("messageDeleted")
                assert event["deletedAt"] == deleted["deletedAt"]
            for device in (a1, b1, a2):
                await device.nothing("messageDeleted", wait=0.5)
                await device.nothing("messageReaction", wait=0)
