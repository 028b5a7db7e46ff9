"""The autoscaler's decision: the HPA's rules, as examples and as properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from messaging_operator import scaling
from messaging_operator.scaling import Decision, PodSample, Policy, Recommendation, decide

POLICY = Policy(
    min_replicas=2, max_replicas=20, target_per_pod=1000, tolerance=0.1, stabilization_seconds=300
)
NOW = 1_000_000.0


def ready(*sockets: float) -> list[PodSample]:
    return [PodSample(name=f"p{i}", ready=True, sockets=s) for i, s in enumerate(sockets)]


def run(
    current: int,
    pods: list[PodSample],
    history: list[Recommendation] | None = None,
    policy: Policy = POLICY,
    now: float = NOW,
) -> Decision:
    return decide(current, pods, policy, history or [], now=now)


# ---- examples from the HPA's documented behaviour -----------------------------------------


def test_load_above_target_scales_up_at_once_by_the_ratio() -> None:
    decision = run(3, ready(2000, 2000, 2000))
    assert decision.desired == 6
    assert decision.reason == scaling.SCALED_UP
    assert decision.able and decision.sockets == 6000


def test_load_within_the_tolerance_keeps_the_count() -> None:
    decision = run(4, ready(1050, 1080, 950, 1000))
    assert decision.desired == 4
    assert decision.reason == scaling.WITHIN_TOLERANCE


def test_scale_down_waits_for_the_highest_recommendation_in_the_window() -> None:
    history = [Recommendation(at=NOW - 100, replicas=6)]
    decision = run(6, ready(100, 100, 100, 100, 100, 100), history)
    assert decision.desired == 6
    assert decision.reason == scaling.STABILIZED
    later = run(
        6, ready(100, 100, 100, 100, 100, 100), list(decision.recommendations), now=NOW + 201
    )
    assert later.desired == 2  # the 6 has left the window; ceil(0.1 * 6) = 1, bounded by min


def test_the_window_only_keeps_recommendations_it_still_needs() -> None:
    history = [
        Recommendation(at=NOW - 400, replicas=9),  # outside the window
        Recommendation(at=NOW - 20, replicas=2),  # outlived by the later, higher 3s
        Recommendation(at=NOW - 10, replicas=5),
        Recommendation(at=NOW - 5, replicas=3),
    ]
    decision = run(3, ready(1000, 1000, 1000), history)
    assert decision.recommendations == (
        Recommendation(at=NOW - 10, replicas=5),
        Recommendation(at=NOW, replicas=3),
    )


def test_no_metrics_keeps_the_count_within_bounds_and_reports_it() -> None:
    decision = run(5, [PodSample("a", ready=True, sockets=None), PodSample("b", ready=False)])
    assert decision.desired == 5
    assert not decision.able
    assert decision.reason == scaling.NO_METRICS
    assert run(1, []).desired == 2
    assert run(30, []).desired == 20


def test_missing_metrics_count_as_at_target_on_a_scale_down() -> None:
    # Two pods read 100 and one ready pod did not answer: the HPA assumes that one is at target,
    # (100 + 100 + 1000) / 3 = 0.4 of the target -> ceil(0.4 * 3) = 2, not ceil(0.2) = 1.
    policy = Policy(min_replicas=1, max_replicas=20, target_per_pod=1000)
    pods = [*ready(100, 100), PodSample("silent", ready=True, sockets=None)]
    assert run(3, pods, policy=policy).desired == 2
    assert run(3, ready(100, 100), policy=policy).desired == 1


def test_missing_metrics_count_as_idle_on_a_scale_up() -> None:
    # 1300 + 1300 + 0 (silent) over 3 pods is 0.87 of the target: a change of direction, so the
    # count stays; without the silent pod the ratio is 1.3 and it scales up.
    pods = [*ready(1300, 1300), PodSample("silent", ready=True, sockets=None)]
    assert run(3, pods).desired == 3
    assert run(2, ready(1300, 1300)).desired == 3


def test_unready_pods_count_as_idle_on_a_scale_up() -> None:
    # (2400 + 2400 + 0) / 3 = 1.6 of the target -> ceil(1.6 * 3) = 5.
    pods = [*ready(2400, 2400), PodSample("starting", ready=False)]
    assert run(3, pods).desired == 5
    # Within the tolerance once the starting pod counts as idle: no change.
    pods = [*ready(1500, 1500), PodSample("starting", ready=False)]
    assert run(3, pods).desired == 3


def test_pods_being_deleted_are_ignored() -> None:
    pods = [*ready(1000, 1000), PodSample("old", ready=True, sockets=0, gone=True)]
    assert run(2, pods).desired == 2


def test_bounds_win_over_the_metric() -> None:
    assert run(10, ready(*[50_000] * 10)).desired == 20
    assert run(2, ready(0, 0)).desired == 2


def test_a_count_above_max_comes_down_even_within_the_window() -> None:
    history = [Recommendation(at=NOW - 5, replicas=40)]
    decision = run(25, ready(*[1000] * 25), history)
    assert decision.desired == 20


# ---- properties -------------------------------------------------------------------------------

policies = st.builds(
    lambda low, span, target, tol, window: Policy(
        min_replicas=low,
        max_replicas=low + span,
        target_per_pod=target,
        tolerance=tol,
        stabilization_seconds=window,
    ),
    st.integers(1, 10),
    st.integers(0, 40),
    st.integers(1, 10_000),
    st.sampled_from([0.0, 0.05, 0.1, 0.2]),
    st.integers(0, 900),
)
pod_lists = st.lists(
    st.builds(
        PodSample,
        name=st.uuids().map(str),
        ready=st.booleans(),
        sockets=st.one_of(st.none(), st.integers(0, 200_000).map(float)),
        gone=st.booleans(),
    ),
    max_size=30,
)
histories = st.lists(
    st.builds(
        Recommendation,
        at=st.floats(NOW - 2000, NOW),
        replicas=st.integers(0, 100),
    ),
    max_size=20,
)


@settings(max_examples=400)
@given(current=st.integers(0, 80), pods=pod_lists, policy=policies, history=histories)
def test_never_outside_min_and_max(
    current: int, pods: list[PodSample], policy: Policy, history: list[Recommendation]
) -> None:
    decision = decide(current, pods, policy, history, now=NOW)
    assert policy.min_replicas <= decision.desired <= policy.max_replicas


@settings(max_examples=400)
@given(
    policy=policies,
    per_pod=st.lists(st.floats(-0.99, 0.99), min_size=1, max_size=30),
    history=histories,
)
def test_no_change_while_the_load_stays_inside_the_tolerance(
    policy: Policy, per_pod: list[float], history: list[Recommendation]
) -> None:
    current = max(policy.min_replicas, min(policy.max_replicas, len(per_pod)))
    per_pod = (per_pod * current)[:current]
    # Every pod strictly within +-tolerance of the target (the boundary is a float coin toss).
    pods = ready(*[policy.target_per_pod * (1 + policy.tolerance * f) for f in per_pod])
    decision = decide(current, pods, policy, history, now=NOW)
    assert decision.desired == current


@settings(max_examples=400)
@given(current=st.integers(1, 60), pods=pod_lists, policy=policies, history=histories)
def test_no_scale_down_below_a_recommendation_still_inside_the_window(
    current: int, pods: list[PodSample], policy: Policy, history: list[Recommendation]
) -> None:
    decision = decide(current, pods, policy, history, now=NOW)
    in_window = [r.replicas for r in history if r.at > NOW - policy.stabilization_seconds]
    floor = min(current, max(in_window, default=0), policy.max_replicas)
    assert decision.desired >= floor


@settings(max_examples=400)
@given(
    policy=policies,
    current=st.integers(1, 40),
    loads=st.tuples(st.integers(0, 100_000), st.integers(0, 100_000)),
    history=histories,
)
def test_more_load_never_means_fewer_replicas(
    policy: Policy, current: int, loads: tuple[int, int], history: list[Recommendation]
) -> None:
    low, high = sorted(loads)
    lighter = decide(current, ready(*[low] * current), policy, history, now=NOW)
    heavier = decide(current, ready(*[high] * current), policy, history, now=NOW)
    assert heavier.desired >= lighter.desired


@settings(max_examples=200)
@given(policy=policies, loads=st.lists(st.integers(0, 50_000), min_size=1, max_size=40))
def test_a_steady_load_settles_and_stays_settled(policy: Policy, loads: list[int]) -> None:
    """Replaying the same total load every 15 seconds converges and then never flaps."""
    total = sum(loads)
    history: list[Recommendation] = []
    current, now, seen = policy.min_replicas, NOW, []
    for _ in range(int(policy.stabilization_seconds / 15) + 12):
        pods = ready(*[total / current] * current)
        decision = decide(current, pods, policy, history, now=now)
        current, history, now = decision.desired, list(decision.recommendations), now + 15
        seen.append(current)
    assert len(set(seen[-3:])) == 1


def test_the_reason_says_what_held_the_count() -> None:
    assert run(2, ready(0, 0)).reason == scaling.TOO_FEW_REPLICAS
    assert run(20, ready(*[50_000] * 20)).reason == scaling.TOO_MANY_REPLICAS
    assert run(4, ready(1000, 1000, 1000, 1000)).reason == scaling.WITHIN_TOLERANCE
    held = run(4, ready(500, 500, 500, 500), [Recommendation(at=NOW - 1, replicas=4)])
    assert (held.desired, held.reason) == (4, scaling.STABILIZED)
    assert run(4, ready(500, 500, 500, 500)).reason == scaling.SCALED_DOWN


@settings(max_examples=300)
@given(
    policy=policies,
    steps=st.lists(st.tuples(st.integers(1, 60), st.integers(0, 20_000)), min_size=1, max_size=60),
)
def test_the_shortened_history_decides_exactly_as_the_full_one(
    policy: Policy, steps: list[tuple[int, int]]
) -> None:
    """Dropping outlived recommendations never changes a decision, and bounds the history."""
    now, current_short, current_full = NOW, policy.min_replicas, policy.min_replicas
    short: tuple[Recommendation, ...] = ()
    full: list[Recommendation] = []
    for gap, load in steps:
        now += gap
        pods = ready(*[load / current_short] * current_short)
        decision = decide(current_short, pods, policy, short, now=now)
        calc = scaling.calculate(current_full, ready(*[load / current_full] * current_full), policy)
        assert calc is not None
        chosen, _ = scaling.stabilize(
            current_full, calc.replicas, full, now=now, window=policy.stabilization_seconds
        )
        full.append(Recommendation(at=now, replicas=calc.replicas))
        expected = max(policy.min_replicas, min(policy.max_replicas, chosen))
        assert decision.desired == expected
        short, current_short = decision.recommendations, decision.desired
        current_full = expected
        assert len(short) <= len({r.replicas for r in short})
