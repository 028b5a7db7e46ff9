"""The one home of the replica count: bounds, /scale's count, the autoscaler's starting point."""

from __future__ import annotations

from messaging_operator import replicas
from messaging_operator.spec import parse_spec
from tests.operator.samples import MINIMAL_SPEC


def test_one_replica_count_whoever_owns_it() -> None:
    auto = parse_spec({**MINIMAL_SPEC, "replicas": {"min": 2, "max": 6}})
    assert replicas.choose(auto, autoscaled=None, recorded=None, live=None) == 2
    assert replicas.choose(auto, autoscaled=None, recorded=5, live=None) == 5
    assert replicas.choose(auto, autoscaled=None, recorded=50, live=None) == 6
    assert replicas.choose(auto, autoscaled=None, recorded=None, live=4) == 4
    assert replicas.choose(auto, autoscaled=1, recorded=5, live=4) == 2
    assert replicas.choose(auto, autoscaled=3, recorded=5, live=4) == 3
    fixed = parse_spec(
        {
            **MINIMAL_SPEC,
            "autoscaling": {"enabled": False},
            "replicas": {"min": 1, "max": 6, "count": 3},
        }
    )
    # The autoscaler's last word does not matter once /scale owns the count.
    assert replicas.choose(fixed, autoscaled=5, recorded=5, live=None) == 3


def test_fixed_replicas_come_from_the_scale_count_within_bounds() -> None:
    base = {**MINIMAL_SPEC, "autoscaling": {"enabled": False}}
    assert replicas.fixed(parse_spec({**base, "replicas": {"min": 2, "max": 5}})) == 2
    assert replicas.fixed(parse_spec({**base, "replicas": {"min": 2, "max": 5, "count": 4}})) == 4
    assert replicas.fixed(parse_spec({**base, "replicas": {"min": 2, "max": 5, "count": 9}})) == 5
    assert replicas.fixed(parse_spec({**base, "replicas": {"min": 2, "max": 5, "count": 0}})) == 2


def test_the_autoscaler_starts_from_the_operators_last_choice_not_a_hand_edit() -> None:
    assert replicas.starting_point(4, 7) == 4
    assert replicas.starting_point(None, 7) == 7
    assert replicas.starting_point(0, 3) == 3
    assert replicas.starting_point(None, None) == 0


def test_clamping_is_one_rule() -> None:
    assert [replicas.clamp(n, 2, 5) for n in (0, 2, 3, 5, 9)] == [2, 2, 3, 5, 5]
