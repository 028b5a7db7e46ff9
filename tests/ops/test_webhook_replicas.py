"""Webhooks across real `messaging serve` processes sharing PostgreSQL: nothing is lost when a
replica is SIGKILLed mid-delivery, when PostgreSQL restarts, or when the receiver is down for a
long while; two replicas never send the same attempt at once."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from tests.support.replicas import Cluster, Replica, logs_on_failure
from tests.support.servers import PostgresServer, free_port
from tests.support.service import Device, unique
from tests.support.webhooks import SECRET, Received, Receiver, receiver

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def hook_settings(hooks: Receiver, **more: str) -> dict[str, str]:
    """What the operator gives the pods (the secret by reference), with short timings."""
    settings = {
        "webhooks": json.dumps(
            [{"url": hooks.url, "secretEnv": "MESSAGING_WEBHOOK_0_SECRET", "events": []}]
        ),
        "webhook_0_secret": SECRET,
        "webhook_poll_seconds": "0.1",
        "webhook_timeout_seconds": "3",
        "webhook_lease_seconds": "4",
        "webhook_retry_base_seconds": "0.2",
        "webhook_retry_max_seconds": "2",
        "webhook_notify_delay_seconds": "3600",
    }
    settings.update(more)
    return settings


async def send_messages(cluster: Cluster, replica: Replica, count: int) -> list[str]:
    """``count`` messages from a new user; returns their ids (retrying while unavailable)."""
    alice, bob = unique("alice"), unique("bob")
    device = Device(replica.url, cluster.token(alice))
    await device.connect()
    try:
        conversation = (await device.ok("createConversation", {"participantId": bob}))["id"]
        ids = []
        for n in range(count):
            payload = {
                "conversationId": conversation,
                "content": f"m{n}",
                "clientMessageId": f"c{n}",
            }
            while True:
                reply = await device.call("sendMessage", payload)
                if reply["ok"]:
                    ids.append(reply["data"]["id"])
                    break
                assert reply["error"]["code"] in ("UNAVAILABLE", "RATE_LIMITED"), reply
                await asyncio.sleep(0.2)
        return ids
    finally:
        await device.disconnect()


def created_ids(requests: list[Received]) -> set[str]:
    return {
        r.event["data"]["id"]
        for r in requests
        if 200 <= r.status < 300 and r.event["type"] == "message.created"
    }


async def test_two_replicas_share_the_outbox_without_sending_an_attempt_twice(
    cluster: Cluster,
) -> None:
    async with receiver() as hooks:
        replicas = await cluster.start(2, **hook_settings(hooks))
        with logs_on_failure(cluster):
            sent = await asyncio.gather(*(send_messages(cluster, r, 40) for r in replicas))
            wanted = {i for ids in sent for i in ids}
            await hooks.wait_for(lambda got: created_ids(got) >= wanted, timeout=90)
            mine = [r for r in hooks.arrived if r.event["data"].get("id") in wanted]
            repeats = [i for i, n in Counter(r.id for r in mine).items() if n > 1]
            assert repeats == []
            assert len(mine) == len(wanted)


async def test_a_replica_killed_mid_delivery_loses_nothing_and_another_finishes(
    cluster: Cluster,
) -> None:
    async with receiver() as hooks:
        release = asyncio.Event()

        async def hang(_: Received) -> int:
            await release.wait()
            return 503  # nobody reads it: the replica that sent it is dead

        hooks.respond = hang
        settings = hook_settings(hooks)
        [first] = await cluster.start(1, **settings)
        with logs_on_failure(cluster):
            ids = await send_messages(cluster, first, 20)
            await hooks.wait_for(lambda _: len(hooks.arrived) >= 1, timeout=60)
            first.kill()  # SIGKILL while its requests hang: nothing is settled
            seen = len(hooks.arrived)
            in_flight = {r.id for r in hooks.arrived}
            release.set()

            async def ok(_: Received) -> int:
                return 204

            hooks.respond = ok
            [second] = await cluster.start(1, **settings)

            def resent() -> set[str]:
                return {r.id for r in hooks.arrived[seen:]}

            # Every message's event arrives, and what the killed replica was sending is sent
            # again under the same ids (an attempt of it that timed out before the kill is
            # retried on its back-off schedule, so it may come after the last message's event).
            await hooks.wait_for(
                lambda got: created_ids(got) >= set(ids) and in_flight <= resent(), timeout=90
            )
            assert in_flight <= resent()
            delivered = (
                f'messaging_webhook_deliveries_total{{endpoint="http://127.0.0.1:{hooks.port}'
                f'/hooks",outcome="delivered"}}'
            )
            # The receiver records a request when it arrives; the replica counts it delivered
            # once it has read the answer, a moment later.
            for _ in range(100):
                if await second.metric(delivered) >= len(in_flight):
                    break
                await asyncio.sleep(0.05)
            assert await second.metric(delivered) >= len(in_flight)


async def test_a_postgresql_restart_loses_no_event(
    cluster: Cluster, postgres_server: PostgresServer
) -> None:
    async with receiver() as hooks:
        refusing = {"on": True}

        async def unavailable_then_ok(_: Received) -> int:
            return 503 if refusing["on"] else 204

        hooks.respond = unavailable_then_ok
        [replica] = await cluster.start(1, **hook_settings(hooks))
        with logs_on_failure(cluster):
            before = await send_messages(cluster, replica, 10)
            await hooks.wait_for(lambda _: len(hooks.arrived) >= 10, timeout=60)
            async with postgres_server.stopped():
                await asyncio.sleep(2)  # the dispatcher's passes fail meanwhile
            refusing["on"] = False
            after = await send_messages(cluster, replica, 10)
            await hooks.wait_for(
                lambda got: created_ids(got) >= set(before) | set(after), timeout=120
            )


async def test_a_receiver_down_for_two_minutes_then_up_gets_everything(cluster: Cluster) -> None:
    port = free_port()
    down = Receiver(port)  # not started: connections are refused
    [replica] = await cluster.start(1, **hook_settings(down))
    with logs_on_failure(cluster):
        ids = await send_messages(cluster, replica, 30)
        label = f'endpoint="http://127.0.0.1:{port}/hooks"'
        retried = f'messaging_webhook_deliveries_total{{{label},outcome="retried"}}'
        # With back-off from 0.2 s to 2 s two minutes hold some sixty attempts per event: more
        # than a day of the default schedule (5 s doubling to an hour) in retries.
        await asyncio.sleep(120)
        assert await replica.metric(retried) >= 30
        async with receiver(port) as hooks:
            await hooks.wait_for(lambda got: created_ids(got) >= set(ids), timeout=60)
