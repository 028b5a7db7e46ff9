"""Notices every replica hears (block changes and their confirmations) on a Redis Cluster.

A replica that commits a block waits until as many replicas as the notice reached have confirmed
they dropped the pair. That count is what publishing answers, so it must be every replica's:
with classic pub/sub on a cluster it was only the subscribers of the node the command happened to
reach (often none), the block was acknowledged before the other replicas heard of it, and a send
through another replica right after it was still let through from that replica's cache.

Several real ``Backplane`` listeners (one per replica) on the six-node test cluster; channels
chosen so their slots fall on every master.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis

from messaging.backplane import Backplane, SlotMap
from messaging.blocking import CHANGED_CHANNEL, acks_channel
from messaging.redis_wire import RedisWire, command
from tests.support.redis_cluster import RedisClusterControl

REPLICAS = 3


async def until(condition: Callable[[], bool], timeout: float) -> None:
    """Poll ``condition`` (a listener's state has no event to wait on from outside)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling another object's state
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def listening(
    url: str, channels: list[str], heard: dict[str, list[bytes]]
) -> AsyncIterator[list[Backplane]]:
    """``REPLICAS`` backplanes hearing ``channels``, their listeners subscribed."""
    backplanes = [
        Backplane(Redis.from_url(url), replica_id=f"replica-{i}", cluster=True)
        for i in range(REPLICAS)
    ]
    for i, backplane in enumerate(backplanes):
        for channel in channels:
            backplane.listen(channel, heard[f"{i}:{channel}"].append)
    tasks = [asyncio.create_task(b.run_listener()) for b in backplanes]
    try:
        await until(lambda: all(b.healthy for b in backplanes), timeout=30)
        yield backplanes
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def channels_on_every_master(slots: SlotMap) -> list[str]:
    """The block channel and enough replicas' ack channels to cover each master."""
    chosen = [CHANGED_CHANNEL]
    covered = {slots.node_of(CHANGED_CHANNEL)}
    for n in range(1000):
        channel = acks_channel(f"replica-{n}")
        if slots.node_of(channel) not in covered:
            covered.add(slots.node_of(channel))
            chosen.append(channel)
    assert covered == set(slots.nodes)
    return chosen


async def test_a_notice_counts_every_replica_that_heard_it_whichever_master_owns_its_channel(
    redis_cluster: RedisClusterControl,
) -> None:
    wire = await RedisWire.open(Redis.from_url(redis_cluster.url))
    try:
        (reply,) = await wire.execute([command("CLUSTER", "SLOTS")])
    finally:
        wire.close()
    slots = SlotMap.from_cluster_slots(reply)
    channels = channels_on_every_master(slots)
    heard: dict[str, list[bytes]] = {f"{i}:{c}": [] for i in range(REPLICAS) for c in channels}
    async with listening(redis_cluster.url, channels, heard) as backplanes:
        for channel in channels:
            for publisher in backplanes:
                assert await publisher.notify(channel, channel.encode()) == REPLICAS
        await until(lambda: all(len(got) == REPLICAS for got in heard.values()), timeout=10)
    assert all(got == [key.split(":", 1)[1].encode()] * REPLICAS for key, got in heard.items())
