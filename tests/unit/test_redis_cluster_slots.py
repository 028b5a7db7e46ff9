"""Where things hash on a Redis Cluster, and how the backplane groups its channels (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from messaging.backplane import (
    Backplane,
    ClusterChanged,
    SlotMap,
    by_node_and_slot,
    channel_user,
    cluster_changing,
    user_channel,
)
from messaging.presence import RegistryKeys
from messaging.ratelimit import bucket_key
from messaging.settings import Settings

A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002)
# A CLUSTER SLOTS reply as hiredis hands it over (bytes), out of slot order.
REPLY = [
    [10923, 16383, [b"10.0.0.3", 7002, b"id-c"], [b"10.0.0.6", 7005, b"id-f"]],
    [0, 5460, [b"10.0.0.1", 7000, b"id-a"], [b"10.0.0.4", 7003, b"id-d"]],
    [5461, 10922, [b"10.0.0.2", 7001, b"id-b"]],
]


def slot(text: str) -> int:
    return key_slot(text.encode())


def test_the_slot_map_names_each_slots_master_from_a_cluster_slots_reply() -> None:
    slots = SlotMap.from_cluster_slots(REPLY)
    assert slots.nodes == [A, B, C]
    assert slots.node_of_slot(0) == A
    assert slots.node_of_slot(5461) == B
    assert slots.node_of_slot(16383) == C
    assert slots.node_of(user_channel("alice", cluster=True)) == slots.node_of_slot(slot("alice"))


def test_a_slot_no_master_serves_has_no_node() -> None:
    slots = SlotMap.from_cluster_slots(REPLY[:2])  # 5461..10922 lost their master
    assert slots.node_of_slot(6000) is None
    orphan = next(u for u in (f"u{i}" for i in range(1000)) if 5461 <= slot(u) <= 10922)
    served = next(u for u in (f"u{i}" for i in range(1000)) if slot(u) <= 5460)
    channels = [user_channel(orphan, cluster=True), user_channel(served, cluster=True)]
    assert by_node_and_slot(channels, slots) == {A: {slot(served): [channels[1]]}}


def test_channels_are_grouped_by_their_masters_node_then_by_slot() -> None:
    slots = SlotMap.from_cluster_slots(REPLY)
    users = [f"user-{i}" for i in range(200)]
    grouped = by_node_and_slot((user_channel(u, cluster=True) for u in users), slots)
    assert set(grouped) == {A, B, C}  # 200 users spread over every master
    seen = []
    for node, by_slot in grouped.items():
        for number, channels in by_slot.items():
            assert slots.node_of_slot(number) == node
            # One SSUBSCRIBE per slot: every channel in it hashes there.
            assert {slot(c) for c in channels} == {number}
            seen.extend(channels)
    assert sorted(seen) == sorted(user_channel(u, cluster=True) for u in users)


def test_a_users_channel_and_keys_hash_to_the_slot_of_their_id() -> None:
    keys = RegistryKeys(cluster=True)
    for user in ("alice", "bob:with:colons", "éü", "a{b"):
        expected = slot(user_channel(user, cluster=True))
        assert slot(keys.user_sockets(user)) == expected
        assert slot(keys.last_seen(user)) == expected
        assert slot(bucket_key(user, "send", cluster=True)) == expected
        assert slot(bucket_key(user, "typing", cluster=True)) == expected


def test_on_one_redis_the_names_stay_the_seeds() -> None:
    keys = RegistryKeys()
    assert keys.user_sockets("u1") == "user-sockets:u1"
    assert keys.socket_user("s1") == "socket-to-user:s1"
    assert keys.replica_sockets("r1") == "replica-sockets:r1"
    assert keys.last_seen("u1") == "last-seen:u1"
    assert bucket_key("u1", "send") == "ratelimit:u1:send"
    assert user_channel("u1") == "deliver:u1"
    assert RegistryKeys(cluster=True).user_sockets("u1") == "user-sockets:{u1}"


@pytest.mark.parametrize("user", ["alice", "with}brace", "{x}", ""])
def test_the_user_of_a_channel_is_read_back(user: str) -> None:
    for cluster in (False, True):
        channel = user_channel(user, cluster=cluster).encode()
        assert channel_user(channel, cluster=cluster) == user


def test_moved_ask_and_clusterdown_mean_the_map_changed() -> None:
    assert cluster_changing(ResponseError("MOVED 3999 127.0.0.1:6381"))
    assert cluster_changing(ResponseError("ASK 3999 127.0.0.1:6381"))
    assert cluster_changing(ResponseError("CLUSTERDOWN The cluster is down"))
    assert not cluster_changing(ResponseError("WRONGTYPE Operation against a key"))
    assert not cluster_changing(b"MOVED")


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"redis_cluster": True}, "needs redis_url"),
        ({"redis_cluster": True, "redis_url": "unix:///run/redis.sock"}, "not unix://"),
        ({"redis_cluster": True, "redis_url": "redis://node:6379/3"}, "only database 0"),
    ],
)
def test_a_redis_cluster_setting_that_cannot_work_fails_at_start(
    settings: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(**settings)  # type: ignore[arg-type]


def test_a_redis_cluster_is_reached_through_one_nodes_url() -> None:
    for url in ("redis://node:6379", "redis://node:6379/0", "rediss://:pw@node:6380/"):
        assert Settings(redis_cluster=True, redis_url=url).redis_cluster is True


async def test_a_sunsubscribe_nobody_asked_for_restarts_the_listener() -> None:
    """The node gave a watched user's slot away (migrated, or it became a replica)."""
    backplane = Backplane(Redis(), replica_id="r", cluster=True)
    backplane._users.add("alice")
    with pytest.raises(ClusterChanged):
        await backplane._handle(A, [b"sunsubscribe", b"deliver:{alice}", 0])
    # Our own SUNSUBSCRIBE's answer (the user left), and one for a user no longer here: fine.
    backplane._unsubscribing["deliver:{alice}"] = 1
    await backplane._handle(A, [b"sunsubscribe", b"deliver:{alice}", 0])
    await backplane._handle(A, [b"sunsubscribe", b"deliver:{bob}", 0])
    with pytest.raises(ClusterChanged):
        await backplane._handle(A, ResponseError("MOVED 3999 10.0.0.2:7001"))
