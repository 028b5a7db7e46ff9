"""A MessagingCluster on the real control plane: children, migration order, status, deletion."""

from __future__ import annotations

from typing import Any

from messaging_operator.builders import migration_job_name
from tests.operator.conftest import RunningOperator, apply_example
from tests.operator.kubeapi import Kube
from tests.support.k8s import wait_until

IMAGE = "ghcr.io/acme/messaging:1.4.0"  # the image of examples/minimal.yaml
JOB = migration_job_name("chat", IMAGE)
CHILDREN = [
    ("Secret", "chat-redis"),
    ("Deployment", "chat-redis"),
    ("Service", "chat-redis"),
    ("Job", JOB),
    ("Deployment", "chat"),
    ("Service", "chat"),
    ("Service", "chat-grpc"),
    ("PodDisruptionBudget", "chat"),
]


def job_complete(job: dict[str, Any] | None) -> bool:
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)


def phase(kube: Kube) -> str | None:
    mc = kube.get("MessagingCluster", "chat") or {}
    return (mc.get("status") or {}).get("phase")


def test_applying_the_minimal_example_creates_every_child_with_owner_references(
    operator: RunningOperator, kube: Kube
) -> None:
    cluster = apply_example(kube)
    uid = cluster["metadata"]["uid"]
    for kind, name in CHILDREN:
        child = wait_until(
            lambda k=kind, n=name: kube.get(k, n),  # type: ignore[misc]
            timeout=60,
            what=f"{kind} {name}",
        )
        refs = child["metadata"].get("ownerReferences") or []
        assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [
            ("MessagingCluster", "chat", uid, True)
        ], f"{kind} {name}"
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "messaging-operator"
        assert labels["app.kubernetes.io/instance"] == "chat"
        assert labels["app.kubernetes.io/part-of"] == "messaging-platform"


def test_the_deployment_appears_only_after_its_migration_job_completed(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube)
    observations = 0

    def deployed_in_order() -> bool:
        nonlocal observations
        observations += 1
        # Read the Deployment first: a Job seen incomplete afterwards was incomplete before.
        deployment = kube.get("Deployment", "chat")
        job = kube.get("Job", JOB)
        if deployment is not None:
            assert job_complete(job), "the Deployment exists while its migration is unfinished"
            return True
        return False

    wait_until(deployed_in_order, timeout=60, interval=0.05, what="the messaging Deployment")
    job = kube.get("Job", JOB)
    deployment = kube.get("Deployment", "chat")
    assert job is not None and deployment is not None
    assert job["status"]["completionTime"] <= deployment["metadata"]["creationTimestamp"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE and container["args"] == ["serve"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_status_walks_to_running_with_the_right_conditions_and_events(
    operator: RunningOperator, kube: Kube
) -> None:
    cluster = apply_example(kube, spec={"autoscaling": {"enabled": False}})
    seen: list[str] = []

    def running() -> bool:
        current = phase(kube)
        if current and (not seen or seen[-1] != current):
            seen.append(current)
        return current == "Running"

    wait_until(running, timeout=90, interval=0.1, what="phase Running")
    assert seen[-1] == "Running" and "Failed" not in seen
    mc = kube.get("MessagingCluster", "chat")
    assert mc is not None
    status = mc["status"]
    assert status["observedGeneration"] == cluster["metadata"]["generation"]
    assert status["readyReplicas"] == status["desiredReplicas"] == 2
    assert status["currentImage"] == IMAGE
    assert status["redis"]["passwordSecretRef"] == {"name": "chat-redis", "key": "password"}
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {
        "Ready": ("True", "Ready"),
        "RedisReady": ("True", "RedisReady"),
        "MigrationsComplete": ("True", "MigrationSucceeded"),
        "ScalingActive": ("False", "ScalingDisabled"),
        "ReconciliationPaused": ("False", "Reconciling"),
    }
    for cond in status["conditions"]:
        assert cond["lastTransitionTime"] and cond["message"]
    # kopf keeps its bookkeeping in annotations, never in the status.
    assert "kopf" not in status

    def transitions() -> set[str] | None:
        reasons = {e["reason"] for e in kube.events_for("chat")}
        wanted = {"MigrationStarted", "MigrationSucceeded", "Ready", "PhaseRunning"}
        return reasons if reasons >= wanted else None

    reasons = wait_until(transitions, timeout=30, what="the transition events")
    assert "RedisPasswordCreated" in reasons
    printed = kube.cluster.kubectl("get", "mc", "chat", "-n", kube.namespace).stdout
    assert "Running" in printed.splitlines()[1]


def test_deleting_the_cluster_garbage_collects_every_child(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube)
    wait_until(lambda: phase(kube) == "Running" or None, timeout=90, what="phase Running")
    kube.delete("MessagingCluster", "chat")
    wait_until(
        lambda: kube.get("MessagingCluster", "chat") is None, timeout=60, what="the cluster gone"
    )

    def all_gone() -> bool:
        return all(kube.get(kind, name) is None for kind, name in CHILDREN)

    wait_until(all_gone, timeout=90, what="every child garbage-collected")
    selector = "app.kubernetes.io/instance=chat"
    assert kube.list("Pod", selector) == [] or wait_until(
        lambda: kube.list("Pod", selector) == [], timeout=60, what="the pods gone"
    )
