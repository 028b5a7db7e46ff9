"""How bench.scaleout reads lock-wait samples and divides a run's costs per message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import lockwaits
from bench.lockwaits import BadSample, WaitSummary, parse_sample


def test_a_backend_waiting_on_a_row_is_counted_as_a_lock_wait_on_its_table() -> None:
    sample = parse_sample(
        [
            ("active", "Lock", "tuple", "tuple", "user_streams", "ExclusiveLock", "UPDATE x"),
            ("active", "IO", "WALSync", "", "", "", ""),
            ("active", "", "", "", "", "", ""),
            ("idle in transaction", "Client", "ClientRead", "", "", "", ""),
        ]
    )
    assert sample.active == 4
    assert sample.waits == {
        "Lock:tuple": 1,
        "IO:WALSync": 1,
        "CPU": 1,
        "ClientInTransaction": 1,
    }
    assert sample.locks == {"tuple on user_streams (ExclusiveLock)": 1}


def test_a_wait_with_no_relation_is_named_by_its_statement_idle_backends_not_at_all() -> None:
    upsert = "\n  INSERT INTO user_streams AS s (user_id, position)\n  VALUES ($1, 1) ON CONFLICT"
    sample = parse_sample(
        [
            ("idle", "Client", "ClientRead", "", "", "", ""),
            ("active", "Lock", "transactionid", "transactionid", "", "ShareLock", upsert),
            ("active", "Lock", "transactionid", "transactionid", "", "ShareLock", ""),
        ]
    )
    assert sample.active == 2
    assert sample.waits == {"Lock:transactionid": 2}
    assert sample.locks == {
        'transactionid in "INSERT INTO user_streams AS s (user_id, position) VALUES ..." '
        "(ShareLock)": 1,
        "transactionid on ? (ShareLock)": 1,
    }


def test_a_statement_label_starts_at_its_verb_and_is_cut_to_width() -> None:
    assert lockwaits.statement_label("/* batch */ WITH incoming AS (SELECT 1)") == (
        "WITH incoming AS (SELECT 1)"
    )
    assert len(lockwaits.statement_label("UPDATE t SET " + "x = 1, " * 40, width=30)) == 30


def test_a_row_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(BadSample):
        parse_sample([("active", "Lock", "tuple")])


def _backends(*waits: tuple[str, str]) -> list[tuple[str, ...]]:
    return [("active", t, e, "", "", "", "") for t, e in waits]


def test_lock_waits_add_up_over_samples_into_backend_milliseconds_per_message() -> None:
    summary = WaitSummary(interval_s=0.1)
    summary.add(parse_sample(_backends(*[("Lock", "transactionid")] * 3)))
    summary.add(parse_sample(_backends(("Lock", "tuple"), ("", ""))))
    summary.add(parse_sample(_backends(("", ""))))
    out = summary.as_json(messages=200)
    assert out["samples"] == 3
    assert out["lock_waits"] == 4
    assert out["samples_with_lock_wait"] == 2
    assert out["lock_wait_share"] == round(4 / 6, 4)
    # 4 backend-samples x 0.1 s = 0.4 backend-seconds over 200 messages.
    assert out["lock_wait_ms_per_message"] == 2.0
    assert out["waits"]["Lock:transactionid"] == 3


def test_no_samples_and_no_messages_give_zero_and_no_per_message_figure() -> None:
    out = WaitSummary(interval_s=0.1).as_json(messages=0)
    assert out["lock_waits"] == 0
    assert out["lock_wait_ms_per_message"] is None
    assert out["mean_active_backends"] == 0


def test_commandstats_are_read_per_command() -> None:
    text = (
        "# Commandstats\r\n"
        "cmdstat_publish:calls=120,usec=900,usec_per_call=7.50,rejected_calls=0,failed_calls=0\r\n"
        "cmdstat_evalsha:calls=7,usec=70,usec_per_call=10.00\r\n"
    )
    assert lockwaits.parse_commandstats(text) == {"publish": 120, "evalsha": 7}


def test_commandstats_of_another_shape_are_refused() -> None:
    with pytest.raises(BadSample):
        lockwaits.parse_commandstats("used_memory:1000\n")
    with pytest.raises(BadSample):
        lockwaits.parse_commandstats("cmdstat_get:usec=3\n")


def test_schedstat_gives_seconds_on_cpu_and_waiting_for_one() -> None:
    assert lockwaits.parse_schedstat("2000000000 500000000 17\n") == (2.0, 0.5)
    with pytest.raises(BadSample):
        lockwaits.parse_schedstat("12")


def test_a_delta_covers_keys_that_appeared_and_refuses_a_counter_that_went_back() -> None:
    assert lockwaits.delta({"a": 1, "b": 5}, {"a": 4, "b": 5, "c": 2}) == {"a": 3, "b": 0, "c": 2}
    with pytest.raises(BadSample, match="went backwards"):
        lockwaits.delta({"xact_commit": 10}, {"xact_commit": 3})


def test_per_message_needs_messages() -> None:
    assert lockwaits.per_message({"wal_bytes": 1000.0}, 8) == {"wal_bytes": 125.0}
    with pytest.raises(BadSample):
        lockwaits.per_message({"wal_bytes": 1.0}, 0)


@given(
    st.floats(0.001, 10.0),
    st.floats(0.0, 10.0),
    st.floats(1.0, 3.0),
    st.floats(3.5, 10.0),
)
def test_the_delivery_split_recovers_the_costs_it_was_built_from(
    per_message: float, per_delivery: float, low: float, high: float
) -> None:
    m, d = lockwaits.delivery_split(
        cpu_per_message_low=per_message + per_delivery * low,
        deliveries_low=low,
        cpu_per_message_high=per_message + per_delivery * high,
        deliveries_high=high,
    )
    assert m == pytest.approx(per_message, abs=1e-6)
    assert d == pytest.approx(per_delivery, abs=1e-6)


def test_the_delivery_split_needs_two_different_fan_outs() -> None:
    with pytest.raises(BadSample):
        lockwaits.delivery_split(
            cpu_per_message_low=1.0,
            deliveries_low=1.0,
            cpu_per_message_high=2.0,
            deliveries_high=1.0,
        )


def test_contention_share_is_the_waiting_part_of_the_wanted_time() -> None:
    assert lockwaits.contention_share(1.0, 3.0) == 0.25
    assert lockwaits.contention_share(0.0, 0.0) == 0.0


def _step(ref: str, replicas: int, acked: float, waits: int, lock: str) -> dict[str, object]:
    return {
        "ref": ref,
        "replicas": replicas,
        "load": "closed w2",
        "acked_per_s": acked,
        "send_to_receive_ms": {"p50": 10.0, "p99": 100.0},
        "lock_waits": {
            "lock_waits": waits,
            "lock_wait_ms_per_message": 0.5,
            "locks_not_granted": {lock: waits},
        },
        "window": {
            "replicas_cpu_ms_per_message": 0.3,
            "replicas_runqueue_wait_ms_per_message": 1.5,
            "replicas_runqueue_share": 0.8,
        },
        "load1": [12.0, 13.0],
    }


def test_the_table_has_a_row_per_revision_and_replica_count_with_the_runs_side_by_side() -> None:
    batch = 'transactionid in "WITH incoming AS ( SELECT * FROM unnest(..." (ShareLock)'
    table = lockwaits.summary_table(
        [
            _step("HEAD", 4, 900, 3, batch),
            _step("old", 2, 700, 9, "transactionid on message_stream (ShareLock)"),
            _step("HEAD", 2, 1000, 2, batch),
            _step("HEAD", 2, 1100, 4, batch),
        ]
    )
    rows = table.splitlines()[2:]
    assert len(rows) == 3
    assert rows[0].startswith(
        "| HEAD | 2 | closed w2 | 1,000 / 1,100 | 10 / 10 | 100 / 100 | 2 / 4 |"
    )
    assert "transactionid in store.py's batch INSERT (ShareLock)" in rows[0]
    assert rows[1].startswith("| HEAD | 4 |")
    assert rows[2].startswith("| old | 2 |")
    assert "message_stream" in rows[2]
    assert "80% / 80%" not in rows[1] and "80%" in rows[1]


def test_known_statements_are_named_in_the_table_and_others_kept_whole() -> None:
    old = 'transactionid in "WITH counter AS ( UPDATE message_stream SET po..." (ShareLock)'
    assert lockwaits.short_lock(old) == "transactionid in UPDATE message_stream (ShareLock)"
    other = 'transactionid in "DELETE FROM x" (ShareLock)'
    assert lockwaits.short_lock(other) == other
    assert lockwaits.short_lock("tuple on user_streams (ExclusiveLock)") == (
        "tuple on user_streams (ExclusiveLock)"
    )
