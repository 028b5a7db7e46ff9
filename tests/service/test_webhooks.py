"""Webhooks end to end in one process: the service (PostgreSQL and SQLite) writes events to its
outbox in the transaction of each change, and its dispatcher POSTs them, signed, to a real HTTP
receiver; signatures are checked with the ``standardwebhooks`` package, as receivers do."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook

from messaging import db, outbox
from messaging.dev_connections import ConnectionGraph
from messaging.outbox import Outbox
from messaging.records import ConversationRecord, MessageRecord
from messaging.settings import Settings
from messaging.storage import outbox as sql
from messaging.tables import webhook_endpoints, webhook_notifications, webhook_outbox
from messaging.webhooks import Dispatcher, Policy
from tests.support.servers import PostgresServer
from tests.support.service import (
    RunningService,
    devices,
    open_conversation,
    running_service,
    service_settings,
    unique,
)
from tests.support.webhooks import SECRET, Received, Receiver, about, new_secret, receiver

pytestmark = pytest.mark.postgres

NOTIFY_DELAY = 1.0


@pytest_asyncio.fixture(scope="module")
async def hooks() -> AsyncIterator[Receiver]:
    async with receiver() as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def hook_svc(
    database_url: str, backend: str, hooks: Receiver
) -> AsyncIterator[RunningService]:
    """The service with one endpoint for every type, short delays and back-off."""
    settings = service_settings(
        database_url,
        webhooks=[{"url": hooks.url, "secret": SECRET}],
        webhook_notify_delay_seconds=NOTIFY_DELAY,
        webhook_poll_seconds=0.05,
        webhook_timeout_seconds=2.0,
        webhook_lease_seconds=5.0,
        webhook_retry_base_seconds=0.1,
        webhook_retry_max_seconds=0.5,
    )
    async with running_service(settings, ConnectionGraph(), backend) as running:
        yield running


def verify(received: Received, secret: str = SECRET) -> dict[str, Any]:
    """What a receiver does: the standardwebhooks package checks the signature and timestamp."""
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


async def _pair(svc: RunningService) -> tuple[str, str]:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    return alice, bob


async def test_every_event_type_with_a_change_on_main_arrives_signed(
    hook_svc: RunningService, hooks: Receiver
) -> None:
    alice, bob = await _pair(hook_svc)
    async with devices(hook_svc, alice, bob) as [a, b]:
        conversation = await open_conversation(hook_svc, a, bob)
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": "hi bob"})
        await b.ok("markRead", {"conversationId": conversation, "upToMessageId": sent["id"]})
        second = await b.ok("sendMessage", {"conversationId": conversation, "content": "yo"})

    mine = about(alice, bob)
    types = ("conversation.created", "message.created", "message.read", "notification.requested")
    await hooks.wait_for(
        lambda _: {r.event["type"] for r in hooks.events(mine)} >= set(types), timeout=30
    )
    events = {r.event["type"]: r for r in reversed(hooks.events(mine))}
    for received in events.values():
        assert verify(received) == received.event
        assert received.id.startswith("msg_")
    assert events["conversation.created"].event["data"]["id"] == conversation
    created = [r.event["data"] for r in hooks.events(mine) if r.event["type"] == "message.created"]
    assert {m["id"] for m in created} == {sent["id"], second["id"]}
    assert next(m for m in created if m["id"] == sent["id"]) == sent
    read = events["message.read"].event["data"]
    assert read["userId"] == bob and read["messageIds"] == [sent["id"]]
    # Alice never marked Bob's message delivered: her push notification is asked for.
    notification = events["notification.requested"].event["data"]
    assert notification == {
        "userId": alice,
        "conversationId": conversation,
        "messageId": second["id"],
        "authorId": bob,
        "preview": "yo",
        "unreadCount": 1,
    }


async def test_a_message_a_device_marked_delivered_requests_no_notification(
    hook_svc: RunningService, hooks: Receiver
) -> None:
    alice, bob = await _pair(hook_svc)
    async with devices(hook_svc, alice, bob) as [a, b]:
        conversation = await open_conversation(hook_svc, a, bob)
        delivered = await a.ok("sendMessage", {"conversationId": conversation, "content": "one"})
        await b.ok("markDelivered", {"messageIds": [delivered["id"]]})
        ignored = await a.ok("sendMessage", {"conversationId": conversation, "content": "two"})

    def notified(_: list[Received]) -> bool:
        return any(r.event["type"] == "notification.requested" for r in hooks.events(about(bob)))

    await hooks.wait_for(notified, timeout=30)
    asked = [
        r.event["data"]["messageId"]
        for r in hooks.events(about(bob))
        if r.event["type"] == "notification.requested"
    ]
    assert asked == [ignored["id"]]  # once, and only for the message no device got
    async with hook_svc.service.chat.engine.connect() as conn:
        left = await conn.scalar(
            select(func.count()).where(
                webhook_notifications.c.message_id.in_(
                    [uuid.UUID(delivered["id"]), uuid.UUID(ignored["id"])]
                )
            )
        )
    assert left == 0


async def test_a_repeated_client_message_id_emits_no_second_event(
    hook_svc: RunningService, hooks: Receiver
) -> None:
    alice, bob = await _pair(hook_svc)
    async with devices(hook_svc, alice) as [a]:
        conversation = await open_conversation(hook_svc, a, bob)
        payload = {"conversationId": conversation, "content": "once", "clientMessageId": "k1"}
        first = await a.ok("sendMessage", payload)
        again = await a.ok("sendMessage", payload)
        marker = await a.ok("sendMessage", {"conversationId": conversation, "content": "after"})
    assert again["id"] == first["id"]

    def created(_: list[Received]) -> list[str]:
        return [
            r.event["data"]["id"]
            for r in hooks.events(about(alice))
            if r.event["type"] == "message.created"
        ]

    await hooks.wait_for(lambda got: {first["id"], marker["id"]} <= set(created(got)), timeout=30)
    # Nothing more is on its way: no row about the first message is left in the outbox.
    for _ in range(300):
        if not await _count(
            hook_svc.service.chat.engine, webhook_outbox.c.body.contains(first["id"])
        ):
            break
        await asyncio.sleep(0.05)
    assert sorted(created([])) == sorted([first["id"], marker["id"]])


async def test_no_endpoint_configured_writes_nothing(svc: RunningService) -> None:
    alice, bob = await _pair(svc)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": "quiet"})
        await b.ok("markRead", {"conversationId": conversation, "upToMessageId": sent["id"]})
    async with svc.service.chat.engine.connect() as conn:
        rows = await conn.scalar(
            select(func.count()).where(
                webhook_outbox.c.body.contains(sent["id"])
                | webhook_outbox.c.body.contains(conversation)
            )
        )
        checks = await conn.scalar(
            select(func.count()).where(webhook_notifications.c.message_id == uuid.UUID(sent["id"]))
        )
    assert (rows, checks) == (0, 0)
    assert svc.service.webhooks is None  # no dispatcher either


async def test_an_event_recorded_in_a_rolled_back_transaction_is_never_sent(
    hook_svc: RunningService, hooks: Receiver
) -> None:
    events = hook_svc.service.chat.outbox
    marker, doomed = unique("kept"), unique("doomed")

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with hook_svc.service.chat.engine.begin() as conn:
            await events.record(conn, "message.reported", _report(doomed))
            raise Abort
    async with hook_svc.service.chat.engine.begin() as conn:
        await events.record(conn, "message.reported", _report(marker))
    await hooks.wait_for(lambda _: bool(hooks.events(about(marker))), timeout=30)
    assert hooks.events(about(doomed)) == []


def _message(author: str = "someone") -> MessageRecord:
    return MessageRecord(
        id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        author_id=author,
        content="reported text",
        status="sent",
        created_at=datetime.now(UTC),
        client_message_id=None,
    )


def _report(reporter: str) -> dict[str, Any]:
    return outbox.message_reported(
        report_id=uuid.uuid4(),
        message=_message(),
        reporter_id=reporter,
        reason="spam",
        reported_at=datetime.now(UTC),
    )


async def test_the_event_types_of_features_in_flight_go_through_the_pipeline(
    hook_svc: RunningService, hooks: Receiver
) -> None:
    """message.updated, message.deleted, message.reported and conversation.updated: the payload
    builders and the one ``record`` call their features make in their transaction."""
    user = unique("editor")
    message = _message(author=user)
    conversation = ConversationRecord(uuid.uuid4(), (user, unique("other")), datetime.now(UTC))
    now = datetime.now(UTC)
    wanted = {
        "message.updated": outbox.message_updated(message),
        "message.deleted": outbox.message_deleted(message, deleted_by=user, deleted_at=now),
        "message.reported": _report(user),
        "conversation.updated": outbox.conversation_updated(
            outbox.conversation_created(conversation),
            change="participantsAdded",
            actor_id=user,
            user_ids=["carol"],
        ),
    }
    async with hook_svc.service.chat.engine.begin() as conn:
        for event_type, data in wanted.items():
            await hook_svc.service.chat.outbox.record(conn, event_type, data)
    await hooks.wait_for(
        lambda _: {r.event["type"] for r in hooks.events(about(user))} >= set(wanted), timeout=30
    )
    for received in hooks.events(about(user)):
        assert verify(received)["data"] == wanted[received.event["type"]]


async def test_a_failed_attempt_is_retried_with_the_same_webhook_id_and_body(
    hook_svc: RunningService, hooks: Receiver
) -> None:
    user = unique("flaky")
    failures = {"left": 3}
    normal = hooks.respond

    async def flaky(received: Received) -> int:
        if about(user)(received.event) and failures["left"] > 0:
            failures["left"] -= 1
            return 503
        return await normal(received)

    hooks.respond = flaky
    try:
        async with hook_svc.service.chat.engine.begin() as conn:
            await hook_svc.service.chat.outbox.record(conn, "message.reported", _report(user))
        await hooks.wait_for(lambda _: bool(hooks.events(about(user))), timeout=30)
    finally:
        hooks.respond = normal
    attempts = [r for r in hooks.requests if about(user)(r.event)]
    assert [r.status for r in attempts] == [503, 503, 503, 204]
    assert len({r.id for r in attempts}) == 1
    assert len({r.body for r in attempts}) == 1
    assert all(verify(r) for r in attempts)  # each attempt signed with its own timestamp


async def _count(engine: AsyncEngine, condition: Any) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).where(condition)) or 0)


async def test_an_endpoint_answering_410_gone_is_disabled(database_url: str, backend: str) -> None:
    secret = new_secret()
    async with receiver() as gone:

        async def answer_gone(_: Received) -> int:
            return 410

        gone.respond = answer_gone
        settings = service_settings(
            database_url, webhooks=[{"url": gone.url, "secret": secret}], webhook_poll_seconds=0.05
        )
        async with running_service(settings, ConnectionGraph(), backend) as running:
            engine = running.service.chat.engine
            async with engine.begin() as conn:
                for _ in range(3):
                    await running.service.chat.outbox.record(
                        conn, "message.reported", _report(unique("r"))
                    )
            await gone.wait_for(lambda got: len(got) >= 1, timeout=30)
            for _ in range(100):  # a connection per look: SQLite's pool holds one
                pending = await _count(engine, webhook_outbox.c.endpoint == gone.url)
                disabled = await _count(engine, webhook_endpoints.c.url == gone.url)
                if pending == 0 and disabled == 1:
                    break
                await asyncio.sleep(0.1)
            assert (pending, disabled) == (0, 1)
            # Later events for it are not even written.
            async with engine.begin() as conn:
                await running.service.chat.outbox.record(conn, "message.reported", _report("x"))
            assert await _count(engine, webhook_outbox.c.endpoint == gone.url) == 0
        async with engine.begin() as conn:
            await conn.execute(
                webhook_endpoints.delete().where(webhook_endpoints.c.url == gone.url)
            )


async def test_an_endpoint_gets_only_the_types_it_asked_for(
    database_url: str, backend: str
) -> None:
    async with receiver() as reads:
        settings = service_settings(
            database_url,
            webhooks=[{"url": reads.url, "secret": SECRET, "events": ["message.read"]}],
            webhook_poll_seconds=0.05,
        )
        async with running_service(settings, ConnectionGraph(), backend) as running:
            alice, bob = await _pair(running)
            async with devices(running, alice, bob) as [a, b]:
                conversation = await open_conversation(running, a, bob)
                sent = await a.ok("sendMessage", {"conversationId": conversation, "content": "x"})
                await b.ok(
                    "markRead", {"conversationId": conversation, "upToMessageId": sent["id"]}
                )
            await reads.wait_for(lambda _: bool(reads.events(about(bob))), timeout=30)
        assert {r.event["type"] for r in reads.requests} == {"message.read"}


async def test_the_console_endpoint_prints_each_event(database_url: str) -> None:
    settings = service_settings(database_url, webhooks_console=True)
    events = Outbox.from_settings(settings)
    printed = io.StringIO()
    engine = db.create_engine(settings)
    try:
        dispatcher = Dispatcher(
            engine=engine, outbox=events, policy=Policy(poll_seconds=0.05), console=printed
        )
        user = unique("printed")
        async with engine.begin() as conn:
            await events.record(conn, "message.reported", _report(user))
        for _ in range(50):
            await dispatcher.pass_once()
            if user in printed.getvalue():
                break
            await asyncio.sleep(0.05)
        await dispatcher.close()
    finally:
        await engine.dispose()
    line = next(x for x in printed.getvalue().splitlines() if user in x)
    assert line.startswith("webhook message.reported {")


async def test_the_http2_capable_client_delivers_signed_events_too(
    database_url: str, backend: str
) -> None:
    """``MESSAGING_WEBHOOK_HTTP2``: httpx with h2 (HTTP/2 over TLS with ALPN, else HTTP/1.1)."""
    async with receiver() as hooks:
        settings = service_settings(
            database_url,
            webhooks=[{"url": hooks.url, "secret": SECRET}],
            webhook_http2=True,
            webhook_poll_seconds=0.05,
        )
        async with running_service(settings, ConnectionGraph(), backend) as running:
            user = unique("h2")
            async with running.service.chat.engine.begin() as conn:
                await running.service.chat.outbox.record(conn, "message.reported", _report(user))
            await hooks.wait_for(lambda _: bool(hooks.events(about(user))), timeout=30)
        [received] = hooks.events(about(user))
        assert verify(received)["data"]["reporterId"] == user


@pytest_asyncio.fixture
async def own_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of this test's own: notification checks are taken by whichever service's
    dispatcher comes first, and the module's service shares the session database."""
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database(f"hooks_{uuid.uuid4().hex[:8]}")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path}/hooks.db"
    await asyncio.to_thread(db.migrate, Settings(database_url=url))
    return url


async def test_notification_previews_can_be_turned_off(own_database_url: str, backend: str) -> None:
    async with receiver() as pushes:
        settings = service_settings(
            own_database_url,
            webhooks=[{"url": pushes.url, "secret": SECRET, "events": ["notification.requested"]}],
            webhook_notify_delay_seconds=0.2,
            webhook_notify_preview=False,
            webhook_poll_seconds=0.05,
        )
        async with running_service(settings, ConnectionGraph(), backend) as running:
            alice, bob = await _pair(running)
            async with devices(running, alice) as [a]:
                conversation = await open_conversation(running, a, bob)
                await a.ok("sendMessage", {"conversationId": conversation, "content": "secret"})
            await pushes.wait_for(lambda _: bool(pushes.events(about(bob))), timeout=30)
        [push] = pushes.events(about(bob))
        assert push.event["data"]["preview"] is None
        assert b"secret" not in push.body


def _fake_rows(events: Outbox, count: int) -> list[Any]:
    return [
        row
        for n in range(count)
        for row in events.rows("message.reported", _report(f"claimed-{n}"))
    ]


async def test_concurrent_claims_never_take_the_same_delivery(pg_svc: RunningService) -> None:
    """Two dispatchers claiming at the same moment get disjoint rows (FOR UPDATE SKIP LOCKED):
    the first's transaction is still open while the second claims."""
    url = f"http://claims.invalid/{uuid.uuid4().hex}"  # an endpoint no running replica knows
    events = Outbox([outbox.Endpoint(url, b"k" * 32, frozenset())])
    engine = pg_svc.service.chat.engine
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await sql.insert_rows(conn, _fake_rows(events, 40), now=now)
    lease = now + timedelta(seconds=60)
    async with engine.begin() as first:
        mine = await sql.claim_due(first, endpoints=[url], now=now, lease_until=lease, limit=25)
        async with engine.begin() as second:
            theirs = await sql.claim_due(
                second, endpoints=[url], now=now, lease_until=lease, limit=25
            )
    assert len(mine) == 25 and len(theirs) == 15
    assert not {d.id for d in mine} & {d.id for d in theirs}
    async with engine.begin() as conn:
        again = await sql.claim_due(conn, endpoints=[url], now=now, lease_until=lease, limit=25)
    assert again == []  # leased: not due until the lease ends


async def test_a_stopping_dispatcher_hands_its_claimed_deliveries_back(
    database_url: str,
) -> None:
    async with receiver() as hanging:
        release = asyncio.Event()

        async def hang(_: Received) -> int:
            await release.wait()
            return 204

        hanging.respond = hang
        settings = service_settings(database_url)
        events = Outbox([outbox.Endpoint(hanging.url, b"k" * 32, frozenset())])
        engine = db.create_engine(settings)
        dispatcher = Dispatcher(engine=engine, outbox=events, policy=Policy(lease_seconds=600))
        try:
            async with engine.begin() as conn:
                await sql.insert_rows(conn, _fake_rows(events, 3), now=datetime.now(UTC))
            task = asyncio.create_task(dispatcher.deliver_batch())
            await hanging.wait_for(lambda _: len(hanging.arrived) == 3, timeout=30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()
            async with engine.connect() as conn:
                due = await conn.scalar(
                    select(func.count()).where(
                        webhook_outbox.c.endpoint == hanging.url,
                        webhook_outbox.c.due_at <= datetime.now(UTC),
                    )
                )
            assert due == 3  # due again now, not in ten minutes
            async with engine.begin() as conn:
                await conn.execute(
                    webhook_outbox.delete().where(webhook_outbox.c.endpoint == hanging.url)
                )
        finally:
            await dispatcher.close()
            await engine.dispose()


async def test_an_attempt_that_times_out_is_retried_under_the_same_id(
    hook_svc: RunningService, hooks: Receiver
) -> None:
    user = unique("slow")
    normal = hooks.respond
    slow_once = {"left": 1}

    async def slow(received: Received) -> int:
        if about(user)(received.event) and slow_once["left"]:
            slow_once["left"] = 0
            await asyncio.sleep(hook_svc.settings.webhook_timeout_seconds + 1)  # past the timeout
        return await normal(received)

    def attempts() -> list[Received]:
        return [r for r in hooks.arrived if about(user)(r.event)]

    hooks.respond = slow
    try:
        async with hook_svc.service.chat.engine.begin() as conn:
            await hook_svc.service.chat.outbox.record(conn, "message.reported", _report(user))
        await hooks.wait_for(lambda _: len(attempts()) >= 2, timeout=30)
    finally:
        hooks.respond = normal
    assert len({r.id for r in attempts()}) == 1


async def test_groups_and_reports_emit_their_events_in_their_transactions(
    hook_svc: RunningService, hooks: Receiver
) -> None:
    """conversation.created and conversation.updated (joined, left) from the group rules,
    message.reported from reportMessage, read by the socket events that make the changes."""
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    hook_svc.connect_users((alice, bob), (alice, carol), (bob, carol))
    async with devices(hook_svc, alice, bob, carol) as [a, b, c]:
        group = await a.ok("createConversation", {"participantIds": [bob], "title": "Hooks"})
        await a.ok("addParticipants", {"conversationId": group["id"], "userIds": [carol]})
        await c.ok("leaveConversation", {"conversationId": group["id"]})
        sent = await a.ok("sendMessage", {"conversationId": group["id"], "content": "spam!"})
        await b.ok("reportMessage", {"messageId": sent["id"], "reason": "spam"})

    def kinds(_: list[Received]) -> list[str]:
        return [r.event["type"] for r in hooks.events(about(alice, bob, carol))]

    await hooks.wait_for(
        lambda got: (
            kinds(got).count("conversation.updated") >= 2 and "message.reported" in kinds(got)
        ),
        timeout=30,
    )
    mine = hooks.events(about(alice, bob, carol))
    created = [r.event["data"] for r in mine if r.event["type"] == "conversation.created"]
    assert [c["id"] for c in created] == [group["id"]] and created[0]["kind"] == "group"
    changes = [r.event["data"]["change"] for r in mine if r.event["type"] == "conversation.updated"]
    assert sorted((ch["type"], ch["userIds"], ch["by"]) for ch in changes) == [
        ("joined", [carol], alice),
        ("left", [carol], carol),
    ]
    [reported] = [r.event["data"] for r in mine if r.event["type"] == "message.reported"]
    assert reported["messageId"] == sent["id"] and reported["reporterId"] == bob
    assert reported["message"]["content"] == "spam!"
    assert reported["reportId"] and reported["reason"] == "spam"
    assert all(verify(r) for r in mine)


async def test_in_a_group_only_members_whose_devices_did_not_get_it_are_notified(
    own_database_url: str, backend: str
) -> None:
    async with receiver() as pushes:
        settings = service_settings(
            own_database_url,
            webhooks=[{"url": pushes.url, "secret": SECRET, "events": ["notification.requested"]}],
            webhook_notify_delay_seconds=0.3,
            webhook_poll_seconds=0.05,
        )
        async with running_service(settings, ConnectionGraph(), backend) as running:
            alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
            running.connect_users((alice, bob), (alice, carol))
            async with devices(running, alice, bob) as [a, b]:
                group = await a.ok(
                    "createConversation", {"participantIds": [bob, carol], "title": "Push"}
                )
                sent = await a.ok("sendMessage", {"conversationId": group["id"], "content": "hi"})
                await b.ok("markDelivered", {"messageIds": [sent["id"]]})
            await pushes.wait_for(lambda _: bool(pushes.events(about(carol))), timeout=30)
            for _ in range(300):  # until every check of the message is settled
                checks = webhook_notifications.c.message_id == uuid.UUID(sent["id"])
                if not await _count(running.service.chat.engine, checks):
                    break
                await asyncio.sleep(0.05)
        notified = [r.event["data"] for r in pushes.delivered()]
        assert [(n["userId"], n["messageId"], n["unreadCount"]) for n in notified] == [
            (carol, sent["id"], 1)
        ]


async def test_edits_and_deletes_emit_message_updated_and_message_deleted(
    hook_svc: RunningService, hooks: Receiver
) -> None:
    alice, bob = await _pair(hook_svc)
    async with devices(hook_svc, alice) as [a]:
        conversation = await open_conversation(hook_svc, a, bob)
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": "typo"})
        edited = await a.ok("editMessage", {"messageId": sent["id"], "content": "fixed"})
        await a.ok("deleteMessage", {"messageId": sent["id"]})

    def kinds(_: list[Received]) -> set[str]:
        return {r.event["type"] for r in hooks.events(about(alice))}

    await hooks.wait_for(lambda got: {"message.updated", "message.deleted"} <= kinds(got), 30)
    mine = {r.event["type"]: r.event["data"] for r in hooks.events(about(alice))}
    assert mine["message.updated"] == edited  # the Message as the edit's ack carries it
    deleted = mine["message.deleted"]
    assert (deleted["id"], deleted["deletedBy"]) == (sent["id"], alice)
