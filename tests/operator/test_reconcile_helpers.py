"""The reconcile pass's pure readings of Kubernetes objects: Jobs, pods, Deployments, counts."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from messaging_operator.reconcile import (
    Gate,
    deployment_state,
    desired_replicas,
    job_state,
    schema_version_from,
    secret_refs,
    termination_message,
)
from messaging_operator.spec import parse_spec
from tests.operator.samples import MINIMAL_SPEC, PRODUCTION_SPEC


def job(*conditions: tuple[str, str], message: str = "") -> dict[str, Any]:
    return {
        "status": {
            "conditions": [
                {"type": kind, "status": state, "message": message} for kind, state in conditions
            ]
        }
    }


def test_job_states_follow_the_terminal_conditions() -> None:
    assert job_state(None) == ("absent", "")
    assert job_state({"status": {}}) == ("running", "")
    assert job_state(job(("SuccessCriteriaMet", "True"))) == ("running", "")
    assert job_state(job(("SuccessCriteriaMet", "True"), ("Complete", "True"))) == (
        "succeeded",
        "",
    )
    assert job_state(job(("Failed", "True"), message="deadline exceeded")) == (
        "failed",
        "deadline exceeded",
    )
    assert job_state(job(("Failed", "False"))) == ("running", "")


def pod(message: str | None) -> dict[str, Any]:
    terminated = {"exitCode": 0} if message is None else {"exitCode": 0, "message": message}
    return {"status": {"containerStatuses": [{"state": {"terminated": terminated}}]}}


@pytest.mark.parametrize(
    ("message", "version"),
    [
        ("0003", "0003"),
        ("0003\n", "0003"),
        ("schema_version=0004", "0004"),
        ("INFO migrating\nschema_version=0005\n", "0005"),
        (None, None),
        ("", None),
    ],
)
def test_the_schema_version_comes_from_the_termination_message(
    message: str | None, version: str | None
) -> None:
    assert schema_version_from(termination_message(pod(message))) == version


def test_a_pod_without_terminated_containers_has_no_message() -> None:
    assert (
        termination_message({"status": {"containerStatuses": [{"state": {"running": {}}}]}}) is None
    )
    assert termination_message({}) is None


def deployment(**status: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 4},
        "spec": {
            "replicas": 3,
            "template": {"spec": {"containers": [{"name": "messaging", "image": "img:1"}]}},
        },
        "status": {"observedGeneration": 4, **status},
    }


def test_a_deployment_is_rolled_out_when_every_pod_runs_the_latest_template() -> None:
    done = deployment_state(deployment(replicas=3, updatedReplicas=3, readyReplicas=3))
    assert done is not None and done.rolled_out and done.image == "img:1"
    rolling = deployment_state(deployment(replicas=4, updatedReplicas=2, readyReplicas=3))
    assert rolling is not None and not rolling.rolled_out
    shrinking = deployment_state(deployment(replicas=5, updatedReplicas=5, readyReplicas=5))
    assert shrinking is not None and shrinking.rolled_out  # a scale-down is not a rollout
    stale = deployment(replicas=3, updatedReplicas=3)
    stale["status"]["observedGeneration"] = 3
    assert not deployment_state(stale).rolled_out  # type: ignore[union-attr]
    assert deployment_state(None) is None


def test_one_replica_count_whoever_owns_it() -> None:
    auto = parse_spec({**MINIMAL_SPEC, "replicas": {"min": 2, "max": 6}})
    assert desired_replicas(auto, None, {}, None) == 2
    assert desired_replicas(auto, None, {"desiredReplicas": 5}, None) == 5
    assert desired_replicas(auto, None, {"desiredReplicas": 50}, None) == 6
    assert desired_replicas(auto, None, {}, {"spec": {"replicas": 4}}) == 4
    fixed = parse_spec(
        {
            **MINIMAL_SPEC,
            "autoscaling": {"enabled": False},
            "replicas": {"min": 1, "max": 6, "count": 3},
        }
    )
    # The autoscaler's last word does not matter once /scale owns the count.
    assert desired_replicas(fixed, None, {"desiredReplicas": 5}, None) == 3


def test_the_secrets_the_pods_read_are_all_checked() -> None:
    assert set(secret_refs(parse_spec(MINIMAL_SPEC))) == {"dsn", "jwt"}
    refs = secret_refs(parse_spec(PRODUCTION_SPEC))
    assert set(refs) == {"dsn", "publicKey", "redisUrl"}
    assert refs["redisUrl"].name == "chat-redis"


async def test_child_events_during_a_pass_coalesce_into_one_more_pass() -> None:
    gate = Gate()
    started = asyncio.Event()
    release = asyncio.Event()
    passes: list[int] = []

    async def reconcile() -> None:
        passes.append(len(passes))
        if len(passes) == 1:
            started.set()
            await release.wait()

    running = asyncio.create_task(gate.run(reconcile))
    await started.wait()
    for _ in range(5):  # a burst of child events while the first pass runs
        await gate.kick(reconcile)
    release.set()
    await running
    assert passes == [0, 1]
    await gate.kick(reconcile)  # idle gate: runs at once
    assert passes == [0, 1, 2]


async def test_a_failing_pass_after_a_child_event_does_not_escape_the_watcher() -> None:
    gate = Gate()

    async def failing() -> None:
        raise kopf.TemporaryError("api down", delay=1)

    await gate.kick(failing)  # logged, not raised: the resync timer retries
    with pytest.raises(kopf.TemporaryError):
        await gate.run(failing)  # a change handler does get the error, for kopf's retries
