"""Pure readings of Kubernetes objects: Jobs, pods, Deployments, Secrets, ownership, drift."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from messaging_operator.observe import (
    deployment_state,
    job_state,
    needs_apply,
    owned_by,
    redis_url_problem,
    schema_version_from,
    secret_problems,
    secret_refs,
    stamp,
    termination_message,
)
from messaging_operator.spec import SecretKeyRef, parse_spec
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
    stale_state = deployment_state(stale)
    assert stale_state is not None and not stale_state.rolled_out
    assert deployment_state(None) is None


def test_the_secrets_the_pods_read_are_all_checked() -> None:
    assert set(secret_refs(parse_spec(MINIMAL_SPEC))) == {"dsn", "jwt"}
    refs = secret_refs(parse_spec(PRODUCTION_SPEC))
    assert set(refs) == {"dsn", "publicKey", "redisUrl"}
    assert refs["redisUrl"].name == "chat-redis-url"


def secret(**data: str) -> dict[str, Any]:
    return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_each_secret_problem_is_named_precisely() -> None:
    refs = {
        "dsn": SecretKeyRef(name="db", key="dsn"),
        "jwt": SecretKeyRef(name="jwt", key="secret"),
        "redisUrl": SecretKeyRef(name="redis", key="url"),
    }
    reading = secret_problems(
        refs, {"db": secret(dsn="postgresql://x"), "jwt": None, "redis": secret(other="x")}
    )
    assert reading.values == {"dsn": "postgresql://x"}
    assert reading.missing == [
        "Secret jwt does not exist (needed for key secret)",
        "Secret redis has no key url",
    ]
    reading = secret_problems(
        {"redisUrl": refs["redisUrl"]}, {"redis": secret(url="http://cache:6379")}
    )
    assert reading.missing == []
    assert reading.invalid == ["Secret redis key url: not a redis:// or rediss:// URL"]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://:pw@cache.apps.svc:6379/0", None),
        ("rediss://cache.example:6380", None),
        ("cache:6379", "not a redis:// or rediss:// URL"),
        ("redis://", "the URL names no host"),
        ("redis://cache:port", "not a URL (Port could not be cast to integer value as 'port')"),
    ],
)
def test_a_redis_url_is_checked_before_pods_get_it(url: str, problem: str | None) -> None:
    assert redis_url_problem(url) == problem


def test_only_objects_naming_the_cluster_as_controller_are_ours() -> None:
    ours = {"metadata": {"ownerReferences": [{"uid": "u-1", "controller": True}]}}
    assert owned_by(ours, "u-1")
    assert not owned_by(ours, "u-2")
    assert not owned_by({"metadata": {"ownerReferences": [{"uid": "u-1"}]}}, "u-1")
    assert not owned_by({"metadata": {"name": "users-own"}}, "u-1")


def test_an_object_is_written_only_when_it_differs() -> None:
    desired = {
        "metadata": {"name": "chat", "labels": {"a": "1"}},
        "spec": {"replicas": 2, "ports": [{"name": "http", "port": 80}]},
    }
    stamped = stamp(desired)
    assert needs_apply(stamped, None)
    # The server adds defaults and others add fields: not a difference.
    observed = stamp(desired)
    observed["metadata"]["uid"] = "x"
    observed["metadata"]["labels"]["team"] = "chat"
    observed["spec"]["ports"][0]["protocol"] = "TCP"
    observed["status"] = {"replicas": 2}
    assert not needs_apply(stamped, observed)
    # A field we set, edited: drift to restore.
    observed["spec"]["replicas"] = 7
    assert needs_apply(stamped, observed)
    # A field we no longer set (the digest changes) must be removed by an apply.
    smaller = stamp({"metadata": {"name": "chat", "labels": {"a": "1"}}, "spec": {"replicas": 2}})
    assert needs_apply(smaller, stamp(desired))


def test_a_redis_cluster_url_naming_a_database_other_than_0_is_refused() -> None:
    ref = {"redisUrl": SecretKeyRef(name="redis", key="url")}
    url = "redis://:pw@cluster.apps.svc:6379/2"
    assert redis_url_problem(url) is None  # one Redis has databases
    assert redis_url_problem(url, cluster=True) == "a Redis Cluster has only database 0"
    assert redis_url_problem("redis://cluster.apps.svc:6379/0", cluster=True) is None
    reading = secret_problems(ref, {"redis": secret(url=url)}, redis_cluster=True)
    assert reading.invalid == ["Secret redis key url: a Redis Cluster has only database 0"]
