"""The bench's bookkeeping: percentiles, and what counts as lost, duplicated or misrouted."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messaging.bench.accounting import (
    RESULT_SCHEMA,
    LatencySummary,
    Ledger,
    Tally,
    load_result,
    memory_per_socket,
    percentile,
    server_cpu_entry,
)

MS = 1_000_000  # nanoseconds


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7], 99) == 7
    assert percentile([1, 2, 3, 4], 50) == 2
    assert math.isnan(percentile([], 50))


def test_percentile_refuses_out_of_range_q() -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1))
def test_percentiles_are_ordered_values_of_the_sample(values: list[int]) -> None:
    summary = LatencySummary.of_microseconds(values)
    assert summary.count == len(values)
    assert summary.p50_ms <= summary.p95_ms <= summary.p99_ms <= summary.max_ms
    assert summary.max_ms == max(values) / 1000
    assert round(summary.p99_ms * 1000) in values


def test_latency_summary_of_nothing_serialises_as_nulls() -> None:
    assert LatencySummary.of_microseconds([]).as_json() == {
        "count": 0,
        "p50": None,
        "p95": None,
        "p99": None,
        "max": None,
        "mean": None,
    }


def test_acked_message_delivered_to_every_expected_device_is_neither_lost_nor_duplicated() -> None:
    ledger = Ledger()
    seq = ledger.sent(0, frozenset({1, 2}))
    ledger.answered(seq, 2 * MS)
    ledger.delivered(seq, 1, 3 * MS)
    ledger.delivered(seq, 2, 5 * MS)
    tally = ledger.close()
    assert (tally.sent, tally.acked, tally.delivered, tally.expected_deliveries) == (1, 1, 2, 2)
    assert (tally.lost, tally.duplicated, tally.misrouted, tally.unanswered) == (0, 0, 0, 0)
    assert list(tally.delivery_us) == [3000, 5000]
    assert list(tally.ack_us) == [2000]


def test_delivery_may_arrive_before_the_ack() -> None:
    ledger = Ledger()
    seq = ledger.sent(0, frozenset({1}))
    ledger.delivered(seq, 1, 1 * MS)
    ledger.answered(seq, 2 * MS)
    tally = ledger.close()
    assert (tally.delivered, tally.lost, tally.duplicated) == (1, 0, 0)


def test_acked_message_missing_on_a_device_is_lost() -> None:
    ledger = Ledger()
    seq = ledger.sent(0, frozenset({1, 2, 3}))
    ledger.answered(seq, MS)
    ledger.delivered(seq, 2, MS)
    assert ledger.undelivered() == 2
    assert ledger.close().lost == 2


def test_unacked_message_that_never_arrives_is_unanswered_not_lost() -> None:
    ledger = Ledger()
    ledger.sent(0, frozenset({1}))
    tally = ledger.close()
    assert (tally.unanswered, tally.lost) == (1, 0)


def test_second_arrival_on_the_same_device_is_a_duplicate_before_and_after_completion() -> None:
    ledger = Ledger()
    first = ledger.sent(0, frozenset({1, 2}))
    ledger.delivered(first, 1, MS)
    ledger.delivered(first, 1, MS)  # while device 2 is still owed
    second = ledger.sent(0, frozenset({1}))
    ledger.answered(second, MS)
    ledger.delivered(second, 1, MS)  # complete: forgotten by the ledger
    ledger.delivered(second, 1, 2 * MS)
    assert ledger.close().duplicated == 2


def test_arrival_on_a_device_that_should_not_get_it_is_misrouted() -> None:
    ledger = Ledger()
    seq = ledger.sent(0, frozenset({1}))
    ledger.delivered(seq, 9, MS)
    ledger.delivered(12345, 1, MS)  # never sent
    assert ledger.close().misrouted == 2


def test_message_whose_send_failed_must_not_be_delivered() -> None:
    ledger = Ledger()
    seq = ledger.sent(0, frozenset({1}))
    assert ledger.answered(seq, MS, "FORBIDDEN")
    ledger.delivered(seq, 1, MS)
    tally = ledger.close()
    assert tally.errors == {"FORBIDDEN": 1}
    assert (tally.misrouted, tally.lost, tally.acked) == (1, 0, 0)


def test_timed_out_send_counts_as_an_error_ignores_its_late_ack_but_may_still_arrive() -> None:
    ledger = Ledger()
    seq = ledger.sent(0, frozenset({1}))
    assert ledger.overdue(older_than_ns=MS) == [seq]
    ledger.timed_out(seq)
    assert ledger.overdue(older_than_ns=MS) == []
    assert not ledger.answered(seq, 2 * MS)
    ledger.delivered(seq, 1, 3 * MS)
    tally = ledger.close()
    assert tally.errors == {"TIMEOUT": 1}
    assert (tally.acked, tally.delivered, tally.misrouted, tally.lost) == (0, 1, 0, 0)
    assert ledger.in_flight == 0


def test_a_second_ack_for_the_same_message_is_ignored() -> None:
    ledger = Ledger()
    seq = ledger.sent(0, frozenset({1}))
    assert ledger.answered(seq, MS)
    assert not ledger.answered(seq, MS)
    assert ledger.close().acked == 1


def test_warm_up_is_excluded_from_latencies_and_rates() -> None:
    ledger = Ledger()
    ledger.set_window(10 * MS, 20 * MS)
    early = ledger.sent(1 * MS, frozenset({1}))
    ledger.answered(early, 11 * MS)  # acked inside the window, sent before it
    ledger.delivered(early, 1, 11 * MS)
    measured = ledger.sent(12 * MS, frozenset({1}))
    ledger.answered(measured, 13 * MS)
    ledger.delivered(measured, 1, 14 * MS)
    late = ledger.sent(19 * MS, frozenset({1}))
    ledger.answered(late, 21 * MS)  # after the window
    ledger.delivered(late, 1, 21 * MS)
    tally = ledger.close()
    assert (tally.acked, tally.acked_in_window, tally.delivered_in_window) == (3, 2, 2)
    assert list(tally.delivery_us) == [2000, 2000]


def test_tallies_travel_between_processes_and_merge_by_addition() -> None:
    ledger = Ledger()
    seq = ledger.sent(0, frozenset({1}))
    ledger.answered(seq, MS)
    ledger.delivered(seq, 1, 2 * MS)
    failed = ledger.sent(0, frozenset({1}))
    ledger.answered(failed, MS, "RATE_LIMITED")
    one = ledger.close()
    copy = Tally.from_wire(one.to_wire())
    assert copy == one
    copy.merge(one)
    assert (copy.sent, copy.acked, copy.errors["RATE_LIMITED"]) == (4, 2, 2)
    assert list(copy.delivery_us) == [2000, 2000]


def test_load_result_has_the_documented_shape() -> None:
    ledger = Ledger()
    for i in range(10):
        seq = ledger.sent(i * MS, frozenset({1}))
        ledger.answered(seq, (i + 1) * MS)
        ledger.delivered(seq, 1, (i + 2) * MS)
    tally = ledger.close()
    result = load_result(
        tally=tally,
        config={"procs": 1},
        measured_seconds=2.0,
        offered_per_s=None,
        loadgen_cpu_seconds=0.01,
        servers=[server_cpu_entry(name="r1", pid=42, cpu_seconds=0.05, acked=tally.acked)],
        started_at="2026-01-01T00:00:00Z",
    )
    assert result["schema"] == RESULT_SCHEMA
    assert result["mode"] == "load"
    assert set(result["totals"]) >= {
        "sent", "acked", "errors", "unanswered", "expected_deliveries", "delivered", "lost",
        "duplicated", "misrouted",
    }  # fmt: skip
    assert result["rates"] == {"offered_per_s": None, "acked_per_s": 5.0, "delivered_per_s": 5.0}
    assert result["latency_ms"]["send_to_receive"]["p99"] == 2.0
    assert result["latency_ms"]["send_to_ack"]["max"] == 1.0
    assert result["loadgen"] == {"procs": 1, "cpu_seconds": 0.01, "cpu_ms_per_message": 1.0}
    assert result["servers"] == [
        {"name": "r1", "pid": 42, "cpu_seconds": 0.05, "cpu_ms_per_message": 5.0}
    ]
    assert result["clean"] is True


def test_memory_per_socket_uses_replicas_that_reported_both_readings() -> None:
    assert memory_per_socket([100, None], [1100, 5000], 10) == 100.0
    assert memory_per_socket([None], [None], 10) is None
    assert memory_per_socket([0], [10], 0) is None
