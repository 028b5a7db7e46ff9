"""Deleted or edited children come back as the spec says; a paused cluster is left alone."""

from __future__ import annotations

import time

from tests.operator.conftest import RESYNC_SECONDS, RunningOperator, apply_example
from tests.operator.kubeapi import Kube
from tests.support.k8s import wait_until


def running(kube: Kube) -> None:
    def check() -> bool:
        mc = kube.get("MessagingCluster", "chat") or {}
        return (mc.get("status") or {}).get("phase") == "Running"

    wait_until(check, timeout=90, what="phase Running")


def test_deleted_children_come_back(operator: RunningOperator, kube: Kube) -> None:
    apply_example(kube)
    running(kube)
    before = {
        (kind, name): kube.get(kind, name)["metadata"]["uid"]  # type: ignore[index]
        for kind, name in [
            ("Deployment", "chat"),
            ("Service", "chat-grpc"),
            ("PodDisruptionBudget", "chat"),
            ("Secret", "chat-redis"),
        ]
    }
    for kind, name in before:
        kube.delete(kind, name)
    for (kind, name), uid in before.items():

        def recreated(k: str = kind, n: str = name, u: str = uid) -> bool:
            obj = kube.get(k, n)
            return obj is not None and obj["metadata"]["uid"] != u

        wait_until(recreated, timeout=30 + 2 * RESYNC_SECONDS, what=f"{kind} {name} recreated")
    running(kube)


def test_edited_fields_are_set_back_and_foreign_ones_kept(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube)
    running(kube)
    kube.merge_patch(
        "Deployment",
        "chat",
        {
            "metadata": {"annotations": {"team.example/owner": "chat-team"}},
            "spec": {"replicas": 7, "template": {"spec": {"terminationGracePeriodSeconds": 90}}},
        },
    )
    kube.merge_patch("Service", "chat", {"spec": {"sessionAffinity": "ClientIP"}})

    def restored() -> bool:
        dep = kube.get("Deployment", "chat") or {}
        svc = kube.get("Service", "chat") or {}
        return bool(
            dep["spec"]["replicas"] == 2
            and dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 35
            and svc["spec"]["sessionAffinity"] == "None"
        )

    wait_until(restored, timeout=30, what="the edited fields set back")
    dep = kube.get("Deployment", "chat") or {}
    assert dep["metadata"]["annotations"]["team.example/owner"] == "chat-team"


def test_a_paused_cluster_leaves_its_children_alone_until_resumed(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube)
    running(kube)
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"paused": True}})
    wait_until(
        lambda: (kube.condition("chat", "ReconciliationPaused") or {}).get("status") == "True",
        timeout=30,
        what="ReconciliationPaused=True",
    )
    kube.delete("Service", "chat-grpc")
    kube.merge_patch("Deployment", "chat", {"spec": {"replicas": 3}})
    # Several resync periods and child events later, nothing has been put back.
    time.sleep(3 * RESYNC_SECONDS)
    assert kube.get("Service", "chat-grpc") is None
    assert (kube.get("Deployment", "chat") or {})["spec"]["replicas"] == 3
    assert (kube.condition("chat", "ScalingActive") or {}).get("reason") == "Paused"
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"paused": False}})
    wait_until(lambda: kube.get("Service", "chat-grpc"), timeout=30, what="the Service back")
    wait_until(
        lambda: (kube.get("Deployment", "chat") or {})["spec"]["replicas"] == 2,
        timeout=30,
        what="the replica count back",
    )
    assert (kube.condition("chat", "ReconciliationPaused") or {}).get("status") == "False"
