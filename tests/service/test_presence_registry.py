"""The presence registry in Redis, as the handshake uses it (real Redis)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from messaging.app import build_redis
from messaging.presence import Presence, user_sockets_key
from messaging.settings import Settings
from tests.support.servers import RedisControl


async def test_a_burst_of_handshakes_counts_sockets_in_one_round_trip_on_one_connection(
    redis_server: RedisControl,
) -> None:
    """Two hundred handshakes counting their users' sockets at once share one pipelined read
    (redis-py would otherwise open a pooled connection per concurrent command), and each still
    gets its own user's count: the registry's sockets plus this replica's own."""
    redis: Redis = build_redis(Settings(redis_url=redis_server.url, replica_id="burst"))  # type: ignore[assignment]
    presence = Presence(replica_id="burst", redis=redis)
    users = [f"burst-user-{n}" for n in range(200)]
    try:
        await redis.flushdb()
        for n, user in enumerate(users):
            if n % 3:
                elsewhere = [f"elsewhere-{n}-{k}" for k in range(n % 3)]
                await redis.sadd(user_sockets_key(user), *elsewhere)
        presence.register(users[0], "local-sid")
        counts = await asyncio.gather(*(presence.count_sockets(user) for user in users))
        assert counts == [1 if n == 0 else n % 3 for n in range(200)]
        ours = [c for c in await redis.client_list() if c["name"] == "messaging:burst"]
        assert len(ours) <= 2, f"{len(ours)} connections for one burst of counts"
    finally:
        await redis.aclose()
