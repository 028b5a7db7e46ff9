"""A Redis Cluster master fails over under load: connected devices lose nothing.

The same load and the same checks as ``test_faults`` (three replicas, ten pairs of official
clients talking across replicas, every acknowledged message exactly once and in order at every
device that stayed connected, every replica ready again within 5 s of the fault ending), on a
six-node Redis Cluster, with the shard that carries part of the traffic failing over: by
``CLUSTER FAILOVER`` on its replica (a planned switch), or by killing its master (the cluster
elects the replica after the node timeout). Messages published while the shard had no master
are filled from the change log: the backplane loses its subscription there and resubscribes on
the new master, and a resubscription makes every replica read its users' logs. Afterwards
presence is still right: every device's user is online to the other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.faults.test_faults import Outcome, run
from tests.faults.traffic import Traffic
from tests.support.redis_cluster import ClusterDeployment, ClusterNode, RedisClusterControl
from tests.support.replicas import Replica


async def _until_failed_over(redis_cluster: RedisClusterControl, old: ClusterNode) -> float:
    """Wait until ``old`` is no master any more and the cluster is ok; returns the seconds."""
    started = time.monotonic()

    def done() -> bool:
        roles = redis_cluster.roles()
        return roles.get(old.port) != "master" and len(redis_cluster.masters()) == 3

    while True:
        if await asyncio.to_thread(done):
            break
        await asyncio.sleep(0.1)
    await asyncio.to_thread(redis_cluster.wait_ok)
    return time.monotonic() - started


async def _everyone_online(traffic: Traffic) -> dict[str, bool]:
    """Each sender asks for its recipient's presence (and each recipient for its sender's)."""
    seen: dict[str, bool] = {}
    for pair in traffic.pairs:
        for asking, other in ((pair.sender, pair.recipient), (pair.recipient, pair.sender)):
            reply = await asking.client.call("getPresence", {"userIds": [other.user]}, timeout=10)
            seen[other.user] = bool(reply["ok"] and reply["data"]["presence"][other.user]["online"])
    return seen


async def _presence_after(traffic: Traffic) -> dict[str, bool]:
    deadline = time.monotonic() + 15
    while True:
        seen = await _everyone_online(traffic)
        if all(seen.values()) or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.5)


async def _run_failover(
    cluster: ClusterDeployment,
    redis_cluster: RedisClusterControl,
    name: str,
    fail: Callable[[ClusterNode, ClusterNode], None],
) -> tuple[Outcome, dict[str, float], dict[str, bool]]:
    """``run`` with the first master failing over by ``fail(master, its replica)``."""
    timings: dict[str, float] = {}
    presence: dict[str, bool] = {}

    async def fault(traffic: Traffic, replicas: list[Replica]) -> list[Replica]:
        master = redis_cluster.masters()[0]
        replica = redis_cluster.replica_of(master)
        started = time.monotonic()
        fail(master, replica)
        timings["failed_over_after"] = round(await _until_failed_over(redis_cluster, master), 2)
        presence.update(await _presence_after(traffic))
        timings["presence_checked_after"] = round(time.monotonic() - started, 2)
        return []

    outcome = await run(cluster, name, fault)
    counted = (
        "messaging_backplane_listener_restarts_total",
        "messaging_delivery_healed_total",
        'messaging_delivery_heals_total{reason="resubscribed"}',
    )
    for replica in cluster.replicas:
        samples = await replica.metrics()
        for key in counted:
            timings[key] = timings.get(key, 0) + samples.get(key, 0.0)
    print(f"FAILOVER {name}: {timings}")
    # The backplane saw the shard change and resubscribed (the healing path ran, not luck).
    assert timings["messaging_backplane_listener_restarts_total"] >= 1, timings
    return outcome, timings, presence


async def test_a_planned_master_failover_loses_no_acknowledged_message(
    replicas_on_redis_cluster: ClusterDeployment, redis_cluster: RedisClusterControl
) -> None:
    def fail(master: ClusterNode, replica: ClusterNode) -> None:
        replica.cli("CLUSTER", "FAILOVER")

    _, _, presence = await _run_failover(
        replicas_on_redis_cluster, redis_cluster, "Redis Cluster: CLUSTER FAILOVER", fail
    )
    assert presence and all(presence.values()), f"offline after the failover: {presence}"


async def test_a_killed_master_loses_no_acknowledged_message_and_presence_stays_right(
    replicas_on_redis_cluster: ClusterDeployment, redis_cluster: RedisClusterControl
) -> None:
    def fail(master: ClusterNode, replica: ClusterNode) -> None:
        master.kill()

    _, _, presence = await _run_failover(
        replicas_on_redis_cluster, redis_cluster, "Redis Cluster: master SIGKILL", fail
    )
    assert presence and all(presence.values()), f"offline after the failover: {presence}"
