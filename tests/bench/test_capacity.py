"""The capacity model (bench/capacity.py): its arithmetic, its limits, docs/scaling.md's table."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import capacity
from bench.capacity import Assumptions, CapacityError, Measured, Workload, project

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3

# Round numbers, so the expected plan can be worked out by hand.
UNIT = Measured(
    replica_cpu_ms_per_message=1.0,
    replica_cpu_ms_per_delivery=0.5,
    replica_cpu_us_per_socket_second=1.0,
    replica_cpu_ms_per_connect=3.6,
    replica_idle_cpu_ms_per_second=100.0,
    replica_base_rss_bytes=0.5 * GIB,
    memory_per_socket_bytes=10_000.0,
    redis_commands_per_message=2.0,
    redis_commands_per_delivery=1.0,
    redis_commands_per_connect=3.6,
    redis_commands_per_socket_second=0.0,
    redis_commands_per_replica_second=0.0,
    redis_cpu_us_per_command=5.0,
    redis_bytes_per_socket=1000.0,
    postgres_cpu_ms_per_message=0.1,
    postgres_commits_per_message=0.1,
    postgres_wal_bytes_per_message=1000.0,
    postgres_wal_records_per_message=10.0,
    postgres_tuples_per_message=5.0,
)
LIMITS = Assumptions(
    pod_cores=1.0,
    pod_cpu_target=0.6,
    pod_memory_bytes=2 * GIB,
    pod_memory_target=0.75,
    min_pods=2,
    redis_shard_cpu_target=0.5,
    min_redis_shards=3,
    postgres_cores=10.0,
    postgres_cpu_target=0.5,
    postgres_wal_bytes_per_s=100e6,
    postgres_wal_target=0.5,
    postgres_commits_per_s=10_000.0,
    postgres_commit_target=0.5,
)


def test_a_plan_worked_out_by_hand() -> None:
    # 10,000 msg/s x 1 ms = 10 cores; 20,000 deliveries x 0.5 ms = 10; 1M sockets x 1 us = 1;
    # 1M x 2/h = 555.6 connects/s x 3.6 ms = 2 cores. 23 cores over (0.6 - 0.1) per pod = 46.
    plan = project(UNIT, LIMITS, Workload(1_000_000, 10_000, 2.0, 2.0))
    assert plan.replica_cores == pytest.approx(23.0)
    assert plan.pods_for_cpu == 46
    # (1.5 GiB - 0.5 GiB) / 10,000 B = 107,374 sockets per pod: 10 pods for 1M.
    assert plan.sockets_per_pod == 107_374
    assert plan.pods_for_memory == 10
    assert plan.pods == 46
    # 20,000 + 20,000 + 2,000 commands/s x 5 us = 0.21 cores: under half a core, but 3 masters.
    assert plan.redis_commands_per_s == pytest.approx(42_000.0)
    assert plan.redis_shards == 3
    # 1 core of 5; 1,000 commits/s of 5,000; 10 MB/s of 50 MB/s: WAL is reached first, at 50k.
    assert plan.postgres_primary_utilisation == {"cpu": 0.2, "wal_bandwidth": 0.2, "commits": 0.2}
    assert plan.postgres_max_messages_per_s == pytest.approx(50_000.0)


def test_the_first_postgres_limit_is_the_one_with_the_lowest_ceiling() -> None:
    wal_heavy = replace(UNIT, postgres_wal_bytes_per_message=4000.0)
    plan = project(wal_heavy, LIMITS, Workload(0, 10_000))
    assert plan.postgres_limit_first_reached == "wal_bandwidth"
    assert plan.postgres_max_messages_per_s == pytest.approx(12_500.0)
    commit_heavy = replace(UNIT, postgres_commits_per_message=1.0)
    assert project(commit_heavy, LIMITS, Workload(0, 1)).postgres_limit_first_reached == "commits"


def test_no_load_needs_the_minimum_deployment_and_nothing_of_postgres() -> None:
    plan = project(UNIT, LIMITS, Workload(0, 0))
    assert (plan.pods, plan.pods_for_cpu, plan.pods_for_memory) == (2, 0, 0)
    assert plan.redis_shards == 3
    assert plan.postgres_cores == 0
    assert plan.postgres_commits_per_s == 0
    assert math.isfinite(plan.postgres_max_messages_per_s)


def test_redis_shards_follow_the_command_rate_past_the_minimum() -> None:
    # 1M msg/s x 3 commands (one delivery) x 5 us = 15 cores: 30 shards at half a core each.
    plan = project(UNIT, LIMITS, Workload(0, 1_000_000, 1.0, 0.0))
    assert plan.redis_shards == 30


loads = st.tuples(st.floats(0, 5e6), st.floats(0, 2e5), st.floats(0, 10), st.floats(0, 20))


@given(loads, st.floats(1.0, 4.0))
def test_more_load_never_needs_less(load: tuple[float, float, float, float], more: float) -> None:
    sockets, rate, deliveries, connects = load
    small = project(UNIT, LIMITS, Workload(sockets, rate, deliveries, connects))
    for bigger in (
        Workload(sockets * more, rate, deliveries, connects),
        Workload(sockets, rate * more, deliveries, connects),
        Workload(sockets, rate, deliveries * more, connects),
        Workload(sockets, rate, deliveries, connects * more),
    ):
        large = project(UNIT, LIMITS, bigger)
        assert large.pods >= small.pods
        assert large.redis_shards >= small.redis_shards
        assert large.redis_commands_per_s >= small.redis_commands_per_s
        assert large.postgres_cores >= small.postgres_cores
        assert large.postgres_wal_bytes_per_s >= small.postgres_wal_bytes_per_s


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"memory_per_socket_bytes": 0.0}, "memory_per_socket_bytes must be positive"),
        ({"replica_cpu_ms_per_message": -1.0}, "must be at least 0"),
        ({"replica_cpu_ms_per_delivery": math.nan}, "must be at least 0"),
        ({"redis_cpu_us_per_command": math.inf}, "must be positive"),
        ({"replica_base_rss_bytes": 2.0 * GIB}, "does not hold the replica"),
        ({"replica_idle_cpu_ms_per_second": 600.0}, "idle work alone"),
    ],
)
def test_measured_figures_that_make_no_sense_are_refused(
    change: dict[str, float], message: str
) -> None:
    with pytest.raises(CapacityError, match=message):
        project(replace(UNIT, **change), LIMITS, Workload(10, 10))


@pytest.mark.parametrize(
    "limits",
    [
        replace(LIMITS, pod_cpu_target=0.0),
        replace(LIMITS, redis_shard_cpu_target=1.5),
        replace(LIMITS, min_pods=0),
        replace(LIMITS, postgres_cores=0.0),
    ],
)
def test_assumptions_out_of_range_are_refused(limits: Assumptions) -> None:
    with pytest.raises(CapacityError):
        project(UNIT, limits, Workload(10, 10))


@pytest.mark.parametrize("workload", [Workload(-1, 10), Workload(10, math.nan)])
def test_a_negative_or_undefined_load_is_refused(workload: Workload) -> None:
    with pytest.raises(CapacityError):
        project(UNIT, LIMITS, workload)


def _unit_inputs() -> dict[str, Any]:
    return {f: getattr(UNIT, f) for f in UNIT.__dataclass_fields__}


def test_inputs_with_a_missing_unknown_or_non_numeric_figure_are_refused() -> None:
    values = _unit_inputs()
    assert capacity.measured_from(values) == UNIT
    with pytest.raises(CapacityError, match="missing measured figures: memory_per_socket"):
        capacity.measured_from({k: v for k, v in values.items() if k != "memory_per_socket_bytes"})
    with pytest.raises(CapacityError, match="unknown measured figures: cpu_per_vibe"):
        capacity.measured_from({**values, "cpu_per_vibe": 1.0})
    with pytest.raises(CapacityError, match="must be a number"):
        capacity.measured_from({**values, "redis_commands_per_message": "2"})
    with pytest.raises(CapacityError, match="must be a number"):
        capacity.measured_from({**values, "redis_commands_per_message": True})
    with pytest.raises(CapacityError, match="'measured' object"):
        capacity.measured_from([1, 2])


def _scaleout_results() -> dict[str, Any]:
    """The parts of a bench.scaleout results file that ``derive`` reads."""

    def step(replicas: int, cpu: float) -> dict[str, Any]:
        return {
            "ref": "HEAD",
            "replicas": replicas,
            "rate": None,
            "devices": 1,
            "deliveries_per_message": 1.0,
            "idle": {"cpu_ms_per_replica_second": 5.0, "redis_commands_per_replica_second": 2.0},
            "window": {
                "replicas_cpu_ms_per_message": 0.3,
                "redis_commands_per_message": 4.0,
                "redis_cpu_ms_per_message": 0.02,
                "postgres_cpu_ms_per_message": cpu,
            },
            "postgres_per_message": {
                "xact_commit": 0.1,
                "wal_bytes": 1500.0,
                "wal_records": 15.0,
                "inserted messages": 1.0,
                "inserted user_changes": 2.0,
                "updated user_streams": 2.0,
            },
        }

    return {
        "command": "python -m bench.scaleout",
        "revisions": [{"ref": "HEAD", "commit": "abc1234"}],
        "steps": [
            step(2, 0.1),
            step(4, 0.3),
            step(6, 0.2),
            {**step(2, 9.0), "rate": 150.0},  # open loop: not a loaded figure
            {**step(2, 9.0), "ref": "f3c30d6"},  # another revision
        ],
        "delivery_split": {
            "cpu_ms_per_message_excluding_deliveries": 0.2,
            "cpu_ms_per_delivery": 0.05,
            "redis_commands_per_message_excluding_deliveries": 2.5,
            "redis_commands_per_delivery": 1.5,
        },
        "idle_sockets": {
            "sockets": 4000,
            "memory_per_socket_bytes": 25_000,
            "replica_rss_before_bytes": 150_000_000,
            "replica_cpu_us_per_socket_second": -0.5,  # below the noise: read as 0
            "replica_cpu_ms_per_connect": 2.0,
            "redis_commands_per_connect": 5.0,
            "redis_commands_per_socket_second": 0.001,
            "redis_bytes_per_socket": 700.0,
        },
    }


def test_inputs_are_derived_from_the_closed_loop_steps_of_the_first_revision() -> None:
    document = capacity.derive(_scaleout_results())
    measured = capacity.measured_from(document["measured"])
    assert measured.postgres_cpu_ms_per_message == 0.2  # median of 0.1, 0.3, 0.2
    assert measured.postgres_tuples_per_message == 5.0
    assert measured.postgres_commits_per_message == 0.1
    assert measured.redis_cpu_us_per_command == 5.0  # 0.02 ms / 4 commands
    assert measured.replica_cpu_ms_per_delivery == 0.05
    assert measured.replica_cpu_ms_per_message == 0.25  # 0.3 with one delivery, less 0.05
    assert measured.redis_commands_per_message == 2.5  # 4.0 less one delivery's 1.5
    assert measured.replica_cpu_us_per_socket_second == 0.0
    assert "3 closed-loop steps of HEAD" in document["provenance"]["loaded figures"]


def test_a_results_file_of_another_shape_is_refused() -> None:
    with pytest.raises(CapacityError, match=r"not a bench\.scaleout results file"):
        capacity.derive({"steps": []})
    broken = _scaleout_results()
    broken["delivery_split"]["cpu_ms_per_delivery"] = -0.1  # noise won: refuse, do not model
    with pytest.raises(CapacityError, match="replica_cpu_ms_per_delivery"):
        capacity.derive(broken)


def test_the_cli_prints_the_plan_and_rejects_a_bad_inputs_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"measured": _unit_inputs()}))
    assert (
        capacity.main(
            ["--inputs", str(inputs), "--sockets", "1000", "--messages-per-s", "0", "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["pods"] == 2
    inputs.write_text(json.dumps({"measured": {"memory_per_socket_bytes": 1}}))
    assert capacity.main(["--inputs", str(inputs)]) == 2
    assert "missing measured figures" in capsys.readouterr().err


def test_docs_scaling_shows_the_projection_of_the_checked_in_measurements() -> None:
    """docs/scaling.md's 1M sockets / 50k messages/s table is what the model makes of
    bench/capacity_inputs.json: neither can change without the other."""
    plan = project(capacity.load_inputs(), Assumptions(), Workload(1_000_000, 50_000))
    table = capacity.markdown(plan, Workload(1_000_000, 50_000))
    assert table in (REPO / "docs" / "scaling.md").read_text()
