"""Replicas on a Redis Cluster: sharded fan-out, presence and rate limits across replicas.

Real ``messaging serve`` processes with ``MESSAGING_REDIS_CLUSTER=true`` on a real six-node
Redis Cluster (``tests.support.redis_cluster``). What is checked is what the contract says of
one Redis, and where things live on the cluster: a user's channel and keys on the slot of their
id.
"""

from __future__ import annotations

import asyncio

from redis.crc import key_slot

from tests.support.redis_cluster import ClusterDeployment, RedisClusterControl
from tests.support.replicas import devices_on, logs_on_failure
from tests.support.service import unique


def _slot_of(text: str) -> int:
    return key_slot(text.encode())


def _owner(redis_cluster: RedisClusterControl, key: str) -> int:
    """The port of the master that owns ``key``'s slot."""
    slot = _slot_of(key)
    seen = redis_cluster.masters()[0]
    for line in seen.cli("CLUSTER", "NODES").splitlines():
        _, address, flags, _, _, _, _, _, *ranges = line.split()
        if "master" not in flags:
            continue
        for part in ranges:
            first, _, last = part.partition("-")
            if first.isdigit() and int(first) <= slot <= int(last or first):
                return int(address.split("@")[0].rsplit(":", 1)[1])
    raise AssertionError(f"no master owns slot {slot}")


async def test_messages_cross_replicas_on_sharded_channels_spread_over_the_masters(
    replicas_on_redis_cluster: ClusterDeployment, redis_cluster: RedisClusterControl
) -> None:
    cluster = replicas_on_redis_cluster
    a, b = await cluster.start(2)
    # Recipients whose channels hash to every master of the cluster.
    masters = {m.port for m in redis_cluster.masters()}
    recipients: dict[int, str] = {}
    while set(recipients) != masters:
        user = unique("bob")
        recipients.setdefault(_owner(redis_cluster, f"deliver:{{{user}}}"), user)
    alice = unique("alice")
    with logs_on_failure(cluster):
        placed = [(alice, a), *((user, b) for user in recipients.values())]
        async with devices_on(cluster, *placed) as [a1, *others]:
            for device, user in zip(others, recipients.values(), strict=True):
                conversation = (await a1.ok("createConversation", {"participantId": user}))["id"]
                sent = [
                    await a1.ok("sendMessage", {"conversationId": conversation, "content": f"{i}"})
                    for i in range(3)
                ]
                assert [await device.next("newMessage") for _ in sent] == sent
                await device.nothing("newMessage", wait=0.3)
            assert await b.metric("messaging_backplane_received_total") == 3 * len(recipients)
            # Every master carried some of it: SPUBLISH went to each channel's own shard.
            for master in redis_cluster.masters():
                stats = master.cli("INFO", "commandstats")
                assert "cmdstat_spublish:" in stats, f"{master.port} published nothing"
                assert "cmdstat_publish:calls" not in stats or _publishes(stats) == 0


def _publishes(commandstats: str) -> int:
    for line in commandstats.splitlines():
        if line.startswith("cmdstat_publish:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_presence_and_the_registry_live_on_the_users_slot_across_replicas(
    replicas_on_redis_cluster: ClusterDeployment, redis_cluster: RedisClusterControl
) -> None:
    cluster = replicas_on_redis_cluster
    a, b = await cluster.start(2)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, b)) as [a1, b1]:
            await a1.ok("createConversation", {"participantId": bob})
            presence = await a1.ok("getPresence", {"userIds": [bob]})
            assert presence["presence"][bob]["online"] is True
            node = redis_cluster.node(_owner(redis_cluster, f"user-sockets:{{{bob}}}"))
            for _ in range(50):  # the registry is written in the background
                if node.cli("SCARD", f"user-sockets:{{{bob}}}") == "1":
                    break
                await asyncio.sleep(0.1)
            assert node.cli("SCARD", f"user-sockets:{{{bob}}}") == "1"
            await b1.disconnect()
            while True:
                seen = (await a1.ok("getPresence", {"userIds": [bob]}))["presence"][bob]
                if not seen["online"]:
                    break
                await asyncio.sleep(0.1)
            assert seen["lastSeenAt"] is not None
            assert node.cli("EXISTS", f"last-seen:{{{bob}}}") == "1"


async def test_a_users_rate_limit_is_one_budget_across_replicas_on_the_cluster(
    replicas_on_redis_cluster: ClusterDeployment, redis_cluster: RedisClusterControl
) -> None:
    cluster = replicas_on_redis_cluster
    burst = 8
    a, b = await cluster.start(
        2, rate_limit_presence_per_second="0.001", rate_limit_presence_burst=str(burst)
    )
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (alice, b), (bob, b)) as [on_a, on_b, _]:
            await on_a.ok("createConversation", {"participantId": bob})
            replies = []
            for _ in range(burst):
                for device in (on_a, on_b):
                    replies.append(await device.call("getPresence", {"userIds": [bob]}))
            admitted = sum(1 for r in replies if r["ok"])
            refused = [r for r in replies if not r["ok"]]
            # Each replica alone would admit a whole burst: one shared budget admits one.
            assert admitted <= burst, f"{admitted} admitted of a budget of {burst}"
            assert refused and {r["error"]["code"] for r in refused} == {"RATE_LIMITED"}
            key = f"ratelimit:{{{alice}}}:presence"
            node = redis_cluster.node(_owner(redis_cluster, key))
            assert node.cli("EXISTS", key) == "1"
            assert _slot_of(key) == _slot_of(f"user-sockets:{{{alice}}}")


async def test_a_block_reaches_every_replica_through_classic_pub_sub_on_the_cluster(
    replicas_on_redis_cluster: ClusterDeployment,
) -> None:
    """Block changes are cluster-wide notices: classic channels, heard by every replica."""
    cluster = replicas_on_redis_cluster
    one, two = await cluster.start(2, blocks_cache_ttl_seconds="3600")
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, one), (bob, two)) as [a, b]:
            conversation = (await a.ok("createConversation", {"participantId": bob}))["id"]
            message = {"conversationId": conversation, "content": "warms replica two's cache"}
            await b.ok("sendMessage", message)
            await a.next("newMessage")
            await a.ok("blockUser", {"userId": bob})
            refused = await b.call("sendMessage", {**message, "content": "after the block"})
            acked = await one.metric('messaging_block_invalidations_total{outcome="acked"}')
    assert refused["ok"] is False and refused["error"]["code"] == "FORBIDDEN"
    assert acked >= 1  # replica two confirmed it dropped the pair before the block's ack
