"""The rate-limit arithmetic and the process-local limit, without Redis."""

from __future__ import annotations

import pytest

from messaging.errors import RateLimited
from messaging.ratelimit import Bucket, Budget, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_grants_its_burst_then_one_token_per_interval() -> None:
    budget = Budget(per_second=2.0, burst=3)
    bucket = Bucket(tokens=3.0, at=0.0)
    assert [bucket.take(budget, 0.0)[0] for _ in range(4)] == [1, 1, 1, 0]
    granted, wait = bucket.take(budget, 0.0)
    assert granted == 0 and wait == pytest.approx(0.5)
    assert bucket.take(budget, 0.5)[0] == 1
    assert bucket.take(budget, 100.0, want=10)[0] == 3  # never more than the burst


def test_a_lease_is_a_quarter_of_the_burst() -> None:
    assert Budget(20.0, 100).lease == 25
    assert Budget(1000.0, 10).lease == 2
    assert Budget(1.0, 3).lease == 1


async def test_past_the_budget_the_error_is_rate_limited_with_retry_after_ms() -> None:
    clock = Clock()
    limiter = RateLimiter({"send": (10.0, 5)}, redis=None, clock=clock)
    for _ in range(5):
        await limiter.admit("alice", "send")
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("alice", "send")
    ack = refused.value.to_ack()
    assert ack["error"]["code"] == "RATE_LIMITED"
    assert ack["error"]["details"] == {"retryAfterMs": 100}
    await limiter.admit("bob", "send")  # other users have their own budget
    clock.now += 0.1
    await limiter.admit("alice", "send")


async def test_each_limit_has_its_own_budget() -> None:
    limiter = RateLimiter({"send": (1.0, 1), "typing": (1.0, 1)}, redis=None, clock=Clock())
    await limiter.admit("alice", "send")
    await limiter.admit("alice", "typing")
    with pytest.raises(RateLimited):
        await limiter.admit("alice", "typing")


async def test_disabled_limits_admit_everything() -> None:
    limiter = RateLimiter({"send": (1.0, 1)}, redis=None, enabled=False, max_in_flight=1)
    for _ in range(10):
        await limiter.admit("alice", "send")
    with limiter.in_flight("alice"), limiter.in_flight("alice"):
        pass


def test_in_flight_slots_are_per_user_and_given_back() -> None:
    limiter = RateLimiter({}, redis=None, max_in_flight=2)
    with limiter.in_flight("alice"), limiter.in_flight("alice"):
        with pytest.raises(RateLimited) as refused, limiter.in_flight("alice"):
            pass
        assert refused.value.details == {"retryAfterMs": 50}
        with limiter.in_flight("bob"):
            pass
    with limiter.in_flight("alice"), limiter.in_flight("alice"):
        pass
