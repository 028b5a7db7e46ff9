"""Redis connections broken by a restart are replaced without failing a request, and a
backplane link that goes silent is noticed within a ping interval."""

from __future__ import annotations

import asyncio
import signal
import time

from tests.support.replicas import Cluster, logs_on_failure
from tests.support.service import Device, unique


async def test_presence_answers_right_after_redis_restarts(cluster: Cluster) -> None:
    """Every pooled connection was cut by the restart; none of them may fail a request."""
    assert cluster.redis is not None
    [a] = await cluster.start(1, rate_limits_enabled="false")  # 60 lookups in a moment
    alice, bob = unique("alice"), unique("bob")
    devices = [Device(a.url, cluster.token(u)) for u in (alice, bob)]
    with logs_on_failure(cluster):
        try:
            await asyncio.gather(*(d.connect() for d in devices))
            await devices[0].ok("createConversation", {"participantId": bob})
            # Many lookups at once: the pool opens many connections.
            lookups = [devices[0].call("getPresence", {"userIds": [bob]}) for _ in range(30)]
            assert all(r["ok"] for r in await asyncio.gather(*lookups))

            cluster.redis.stop()
            cluster.redis.start()
            await a.wait_ready(timeout=20)
            after = [devices[0].call("getPresence", {"userIds": [bob]}) for _ in range(30)]
            replies = await asyncio.gather(*after)
        finally:
            await asyncio.gather(*(d.disconnect() for d in devices), return_exceptions=True)
    failed = [r for r in replies if not r["ok"]]
    assert not failed, f"{len(failed)} of {len(replies)} presence lookups failed: {failed[0]}"


async def test_a_backplane_link_that_goes_silent_is_noticed_and_resubscribed(
    cluster: Cluster,
) -> None:
    """Redis stops answering without closing the connection (here: the process is frozen)."""
    assert cluster.redis is not None
    [a] = await cluster.start(1)
    with logs_on_failure(cluster):
        restarts = await a.metric("messaging_backplane_listener_restarts_total")
        cluster.redis.process.send_signal(signal.SIGSTOP)
        silenced = time.monotonic()
        noticed = None
        try:
            while time.monotonic() - silenced < 8:
                await asyncio.sleep(0.1)
                if await a.metric("messaging_backplane_listener_up") == 0:
                    noticed = time.monotonic() - silenced
                    break
        finally:
            cluster.redis.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 15
        while await a.metric("messaging_backplane_listener_restarts_total") == restarts:
            assert time.monotonic() < deadline, "the listener never resubscribed"
            await asyncio.sleep(0.1)
    print(f"silent backplane link noticed after {noticed}s")
    assert noticed is not None, "the listener still looked healthy while Redis was silent"
    # One ping interval (2 s), and room for a loaded machine's scheduling and metric reads.
    assert noticed < 2.0 + 2.0, f"noticed only after {noticed:.1f}s"
