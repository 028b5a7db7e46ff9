"""Message ids are UUIDv7: they sort the way messages were created."""

from __future__ import annotations

import time
import uuid

from messaging.ids import new_message_id, uuid7_at, uuid7_ms


def test_ids_are_version_7_with_the_rfc_variant() -> None:
    message_id, _ = new_message_id()
    assert message_id.version == 7
    assert message_id.variant == uuid.RFC_4122


def test_ids_made_one_after_another_sort_in_that_order_even_within_a_millisecond() -> None:
    ids = [new_message_id()[0] for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert [str(i) for i in ids] == sorted(str(i) for i in ids)  # also as text (SQLite)


def test_an_id_carries_the_millisecond_of_its_creation_time() -> None:
    message_id, created_at = new_message_id()
    assert uuid7_ms(message_id) == int(created_at.timestamp() * 1000)
    assert abs(uuid7_ms(message_id) - time.time() * 1000) < 1000


def test_a_clock_that_steps_back_never_makes_an_id_sort_earlier() -> None:
    later = uuid7_at(2_000_000_000_000)
    after_step_back = uuid7_at(1_000_000_000_000)
    assert after_step_back > later
