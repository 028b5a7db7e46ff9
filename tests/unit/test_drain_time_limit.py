"""How long a drain may run before the process stops anyway (serve.drain_time_limit)."""

from __future__ import annotations

import pytest

from messaging.serve import STOP_RESERVE_SECONDS, drain_time_limit


def test_the_service_stop_keeps_its_reserve_before_the_deadline() -> None:
    assert drain_time_limit(window=3.0, deadline=10.0) == 10.0 - STOP_RESERVE_SECONDS
    assert drain_time_limit(window=10.0, deadline=25.0) == 25.0 - STOP_RESERVE_SECONDS


def test_the_drain_always_gets_its_window_when_the_deadline_allows() -> None:
    # The gradual closes take the whole window; a deadline just past it leaves no full reserve.
    assert drain_time_limit(window=8.0, deadline=10.0) == 8.0


@pytest.mark.parametrize(("window", "deadline"), [(9.8, 10.0), (0.0, 0.5), (3.0, 3.5)])
def test_the_drain_never_runs_into_the_watchdogs_force(window: float, deadline: float) -> None:
    limit = drain_time_limit(window=window, deadline=deadline)
    assert 0.0 <= limit <= max(0.0, deadline - 1.0)
