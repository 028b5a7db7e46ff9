"""reportMessage: any participant but the author reports a message once; reports are stored."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from messaging import tables
from messaging.records import MessageRecord
from messaging.reports import Reports, reported_event
from messaging.storage import reports as storage
from messaging.storage.reports import ReportRecord
from tests.support.service import RunningService, devices, open_conversation, unique


async def _message(svc: RunningService, author: str, other: str) -> tuple[str, str]:
    """A conversation between ``author`` and ``other`` holding one message of ``author``."""
    svc.connect_users((author, other))
    async with devices(svc, author) as [a]:
        conversation = await open_conversation(svc, a, other)
        sent = await a.ok("sendMessage", {"conversationId": conversation, "content": "rude"})
    return conversation, str(sent["id"])


async def _stored(svc: RunningService, report_id: str) -> ReportRecord | None:
    async with svc.service.chat.engine.connect() as conn:
        return await storage.get_report(conn, uuid.UUID(report_id))


async def test_a_participant_reports_a_message_and_the_report_is_stored(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    conversation, message = await _message(svc, alice, bob)
    async with devices(svc, bob) as [b]:
        data = await b.ok(
            "reportMessage", {"messageId": message, "reason": "abuse", "note": "threats\nagain"}
        )
    report = await _stored(svc, data["reportId"])
    assert report is not None
    assert str(report.id) == data["reportId"]
    assert (str(report.message_id), str(report.conversation_id)) == (message, conversation)
    assert (report.reporter_id, report.author_id) == (bob, alice)
    assert (report.reason, report.note) == ("abuse", "threats\nagain")


async def test_reporting_the_same_message_twice_returns_the_first_report(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    _, message = await _message(svc, alice, bob)
    async with devices(svc, bob) as [b]:
        first = await b.ok("reportMessage", {"messageId": message, "reason": "spam"})
        second = await b.ok("reportMessage", {"messageId": message, "reason": "other", "note": ""})
    async with svc.service.chat.engine.connect() as conn:
        count = (
            await conn.execute(
                select(func.count())
                .select_from(tables.reports)
                .where(tables.reports.c.message_id == uuid.UUID(message))
            )
        ).scalar_one()
    assert second == first
    assert count == 1
    report = await _stored(svc, first["reportId"])
    assert report is not None and (report.reason, report.note) == ("spam", None)


async def test_the_author_cannot_report_their_own_message(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    _, message = await _message(svc, alice, bob)
    async with devices(svc, alice) as [a]:
        reply = await a.call("reportMessage", {"messageId": message, "reason": "spam"})
    assert reply["error"]["code"] == "FORBIDDEN"


async def test_a_message_outside_your_conversations_cannot_be_reported_nor_seen_to_exist(
    svc: RunningService,
) -> None:
    alice, bob, eve = unique("alice"), unique("bob"), unique("eve")
    _, message = await _message(svc, alice, bob)
    async with devices(svc, eve) as [e]:
        theirs = await e.call("reportMessage", {"messageId": message, "reason": "spam"})
        missing = await e.call("reportMessage", {"messageId": str(uuid.uuid4()), "reason": "spam"})
    assert theirs["error"]["code"] == "NOT_FOUND"
    assert theirs == missing  # the same answer whether or not the message exists


async def test_a_blocked_or_blocking_participant_can_still_report(svc: RunningService) -> None:
    """Report, then block, in either order: blocking never stands in the way of a report."""
    alice, bob = unique("alice"), unique("bob")
    _, message = await _message(svc, alice, bob)
    async with devices(svc, alice, bob) as [a, b]:
        await b.ok("blockUser", {"userId": alice})
        await a.ok("blockUser", {"userId": bob})
        data = await b.ok("reportMessage", {"messageId": message, "reason": "abuse"})
    assert await _stored(svc, data["reportId"]) is not None


async def test_bad_report_payloads_are_validation_errors(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    _, message = await _message(svc, alice, bob)
    payloads: list[Any] = [
        {},
        {"messageId": message},
        {"reason": "spam"},
        {"messageId": "not-a-uuid", "reason": "spam"},
        {"messageId": message, "reason": "rude"},
        {"messageId": message, "reason": "SPAM"},
        {"messageId": message, "reason": "spam", "note": "x" * 501},
        {"messageId": message, "reason": "spam", "note": "bad\x00note"},
        {"messageId": message, "reason": "spam", "note": 5},
        {"messageId": message, "reason": "spam", "extra": True},
        [message],
    ]
    async with devices(svc, bob) as [b]:
        for payload in payloads:
            reply = await b.call("reportMessage", payload)
            assert reply["error"]["code"] == "VALIDATION_FAILED", payload
        longest = await b.call(
            "reportMessage", {"messageId": message, "reason": "other", "note": "n" * 500}
        )
    assert longest["ok"] is True


async def test_the_reported_hook_runs_inside_the_reports_transaction(svc: RunningService) -> None:
    """Where the outbox records ``message.reported``: it commits with the report, or neither."""
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    _, message = await _message(svc, alice, bob)
    seen: list[dict[str, Any]] = []

    async def record(conn: AsyncConnection, report: ReportRecord, msg: MessageRecord) -> None:
        # Inside the transaction: the report is visible on the same connection already.
        assert await storage.get_report(conn, report.id) is not None
        seen.append(reported_event(report, msg))

    async def fail(conn: AsyncConnection, report: ReportRecord, msg: MessageRecord) -> None:
        raise RuntimeError("the outbox is broken")

    reports = Reports(transaction=svc.service.chat.database.transaction, on_reported=record)
    report = await reports.report(bob, message_id=uuid.UUID(message), reason="spam", note="n")
    await reports.report(bob, message_id=uuid.UUID(message), reason="spam", note="n")  # a repeat

    failing = Reports(transaction=svc.service.chat.database.transaction, on_reported=fail)
    svc.connect_users((carol, alice))
    async with devices(svc, carol) as [c]:
        conversation = await open_conversation(svc, c, alice)
        other = await c.ok("sendMessage", {"conversationId": conversation, "content": "x"})
    with pytest.raises(RuntimeError):
        await failing.report(alice, message_id=uuid.UUID(other["id"]), reason="abuse", note=None)
    async with svc.service.chat.engine.connect() as conn:
        left = (
            await conn.execute(
                select(func.count())
                .select_from(tables.reports)
                .where(tables.reports.c.message_id == uuid.UUID(other["id"]))
            )
        ).scalar_one()
    assert len(seen) == 1  # once per stored report, not for the repeat
    assert seen[0]["reportId"] == str(report.id)
    assert seen[0]["message"]["content"] == "rude"
    assert (seen[0]["reporterId"], seen[0]["authorId"], seen[0]["reason"]) == (bob, alice, "spam")
    assert left == 0  # the hook failed: the report was rolled back with it
