"""How the load generator places users and devices on replicas and workers."""

from __future__ import annotations

import jwt
from hypothesis import given
from hypothesis import strategies as st

from messaging.bench.load import mint_token, owned_pairs, replica_of


@given(st.integers(0, 10_000), st.integers(2, 8))
def test_the_two_ends_of_a_pair_sit_on_different_replicas(pair: int, replicas: int) -> None:
    first, second = 2 * pair, 2 * pair + 1
    assert replica_of(first, 0, replicas) != replica_of(second, 0, replicas)


def test_a_users_devices_spread_round_robin() -> None:
    assert [replica_of(4, d, 2) for d in range(4)] == [0, 1, 0, 1]
    assert [replica_of(0, d, 3) for d in range(3)] == [0, 1, 2]


@given(st.integers(1, 500).map(lambda n: 2 * n), st.integers(1, 16))
def test_workers_own_every_pair_exactly_once(users: int, workers: int) -> None:
    owned = [k for w in range(workers) for k in owned_pairs(users, w, workers)]
    assert sorted(owned) == list(range(users // 2))


def test_minted_tokens_carry_sub_and_exp_and_verify_with_the_secret() -> None:
    token = mint_token("s" * 32, "bench-ab-3", 60)
    claims = jwt.decode(token, "s" * 32, algorithms=["HS256"])
    assert claims["sub"] == "bench-ab-3"
    assert claims["exp"] - claims["iat"] == 60
