"""Reads that asyncpg runs itself (``store.driver_fetch``) map rows by position, not by name:
their statements must keep the columns in the order the mapping reads them."""

from __future__ import annotations

import dataclasses

from messaging.storage import attachments, messages
from messaging.store import MESSAGE_COLUMNS


def test_an_upload_is_read_from_its_columns_in_field_order() -> None:
    columns = [c.name for c in attachments._COLUMNS]
    assert columns == [f.name for f in dataclasses.fields(attachments.Upload)]
    assert "= ANY ($1::UUID[])" in attachments._of_messages_statement().sql


def test_a_history_page_row_is_the_message_columns_then_its_reactions() -> None:
    names = [c.name for c in MESSAGE_COLUMNS]
    record = (*(f"<{n}>" for n in names), ["+1", "+1"], ["bob", "carol"])
    message = messages._message_of_record(record)
    assert {n: getattr(message, n) for n in names} == {n: f"<{n}>" for n in names}
    assert message.reactions == (("+1", ("bob", "carol")),)
    for after_join in (False, True):
        for before in (False, True):
            statement = messages.history_statement(after_join=after_join, before=before)
            head = ", ".join(f"page.{n}" for n in names)
            assert statement.sql.startswith(f"SELECT {head}, reacted.emojis, reacted.reactors")
            assert statement.names[0] == "conversation_id" and statement.names[-1] == "limit"
