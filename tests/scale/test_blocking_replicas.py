"""A block holds at once on every replica, though each caches the answer for its pairs.

Two real `messaging serve` replicas share PostgreSQL and Redis; the block cache's TTL is an hour,
so only the invalidation through the backplane can make a replica see a change in time.
"""

from __future__ import annotations

from tests.support.replicas import Cluster, devices_on, logs_on_failure
from tests.support.service import unique

CACHED_FOR_AN_HOUR = {"blocks_cache_ttl_seconds": "3600"}


def send(conversation: str, content: str) -> dict[str, str]:
    return {"conversationId": conversation, "content": content}


async def test_a_block_made_on_one_replica_refuses_a_send_through_another_at_once(
    cluster: Cluster,
) -> None:
    one, two = await cluster.start(2, **CACHED_FOR_AN_HOUR)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, one), (bob, two)) as [a, b]:
            conversation = (await a.ok("createConversation", {"participantId": bob}))["id"]
            await b.ok("sendMessage", send(conversation, "warms replica two's cache"))
            await b.ok("sendMessage", send(conversation, "answered from that cache"))
            cached = await two.metric('messaging_block_checks_total{source="cache"}')
            assert cached >= 1  # replica two answers this pair from its cache now

            await a.ok("blockUser", {"userId": bob})
            refused = await b.call("sendMessage", send(conversation, "after the block"))
            typing = await b.call("typing", {"conversationId": conversation, "isTyping": True})

            await a.ok("unblockUser", {"userId": bob})
            allowed = await b.call("sendMessage", send(conversation, "after the unblock"))

            received = [(await a.next("newMessage"))["content"] for _ in range(3)]
            await a.nothing("newMessage", wait=0.5)
            await a.nothing("typing", wait=0)
        acked = await one.metric('messaging_block_invalidations_total{outcome="acked"}')
    assert refused["ok"] is False and refused["error"]["code"] == "FORBIDDEN"
    assert typing == {"ok": True, "data": {}}
    assert allowed["ok"] is True
    assert received == [
        "warms replica two's cache",
        "answered from that cache",
        "after the unblock",
    ]
    assert acked == 2  # the block and the unblock, each confirmed by both replicas


async def test_a_replica_that_lost_redis_reads_blocks_through_and_forgets_its_cache_on_return(
    cluster: Cluster,
) -> None:
    """While its subscription is down a replica cannot hear block changes: it asks the database,
    and once resubscribed it starts from an empty cache (it may have missed announcements)."""
    one, two = await cluster.start(2, **CACHED_FOR_AN_HOUR)
    alice, bob = unique("alice"), unique("bob")
    assert cluster.redis is not None
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, one), (bob, two)) as [a, b]:
            conversation = (await a.ok("createConversation", {"participantId": bob}))["id"]
            await b.ok("sendMessage", send(conversation, "cached"))
            cluster.redis.stop()
            # Redis is away: the announcement cannot reach replica two, yet the block holds.
            await a.ok("blockUser", {"userId": bob})
            refused = await b.call("sendMessage", send(conversation, "while Redis is down"))
            cluster.redis.start()
            await two.wait_ready()  # ready again: its listener has resubscribed
            # Its cache still said "not blocked" for this pair from before the outage.
            still_refused = await b.call("sendMessage", send(conversation, "after it returned"))
            await a.ok("unblockUser", {"userId": bob})
            allowed = await b.call("sendMessage", send(conversation, "after the unblock"))
    assert refused["ok"] is False and refused["error"]["code"] == "FORBIDDEN"
    assert still_refused["ok"] is False and still_refused["error"]["code"] == "FORBIDDEN"
    assert allowed["ok"] is True
