"""What `bench.ab` charges a side per message: every process of the run, not only the replicas."""

from __future__ import annotations

from typing import Any

from bench.ab import host_cpu


def run_result(replicas: list[float | None], pg: float | None, loadgen: float) -> dict[str, Any]:
    return {
        "servers": [{"cpu_ms_per_message": c} for c in replicas],
        "server_metrics": {"pg_redis_cpu_ms_per_msg": [pg, 0.01]},
        "loadgen": {"cpu_ms_per_message": loadgen},
    }


def test_the_host_figure_adds_replicas_postgres_redis_and_the_load_generator() -> None:
    assert host_cpu(run_result([0.12, 0.13], 0.125, 0.05)) == 0.435


def test_a_process_whose_cost_is_unknown_leaves_the_host_figure_unknown() -> None:
    assert host_cpu(run_result([0.12, None], 0.125, 0.05)) is None
    assert host_cpu(run_result([0.12, 0.13], None, 0.05)) is None
