"""The replica's one clock of session deadlines: due sessions come out once, in order."""

from __future__ import annotations

from messaging.sessions import SessionClock


def test_sessions_come_due_in_deadline_order_and_only_once() -> None:
    clock = SessionClock()
    clock.set("b", 20.0)
    clock.set("a", 10.0)
    clock.set("c", 30.0)
    assert clock.due(5.0) == []
    assert clock.due(20.0) == ["a", "b"]
    assert clock.due(25.0) == []
    assert len(clock) == 1


def test_a_moved_deadline_replaces_the_old_one() -> None:
    clock = SessionClock()
    clock.set("a", 10.0)
    clock.set("a", 50.0)  # reauthenticate
    assert clock.due(40.0) == []
    assert clock.deadline("a") == 50.0
    assert clock.due(50.0) == ["a"]


def test_a_forgotten_session_never_comes_due() -> None:
    clock = SessionClock()
    clock.set("a", 10.0)
    clock.forget("a")
    assert clock.due(100.0) == []
    assert clock.deadline("a") is None


def test_frequent_reauthentication_does_not_grow_the_heap_without_bound() -> None:
    clock = SessionClock()
    for step in range(10_000):
        clock.set("a", float(step))
    assert len(clock._heap) < 200
    assert clock.due(20_000.0) == ["a"]
