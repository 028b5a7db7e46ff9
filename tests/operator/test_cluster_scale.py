"""/scale owns the replica count when autoscaling is off; the operator's RBAC is minimal."""

from __future__ import annotations

import pytest

from tests.operator.conftest import RunningOperator, apply_example
from tests.operator.kubeapi import Kube
from tests.support.k8s import K8sCluster, wait_until


def deployment_replicas(kube: Kube) -> int | None:
    dep = kube.get("Deployment", "chat")
    return int(dep["spec"]["replicas"]) if dep else None


def test_the_scale_subresource_drives_the_deployment_when_autoscaling_is_off(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube, spec={"autoscaling": {"enabled": False}, "replicas": {"min": 1, "max": 4}})
    wait_until(lambda: deployment_replicas(kube) == 1, timeout=60, what="1 replica (min)")
    kube.cluster.kubectl("scale", "mc", "chat", "-n", kube.namespace, "--replicas=3")
    wait_until(lambda: deployment_replicas(kube) == 3, timeout=30, what="3 replicas")

    def scale_reports_three() -> bool:
        scale = kube.get("MessagingCluster", "chat", sub="scale") or {}
        return scale.get("status", {}).get("replicas") == 3 and bool(
            scale.get("status", {}).get("selector")
        )

    wait_until(scale_reports_three, timeout=30, what="/scale reporting 3 pods and a selector")
    scale = kube.get("MessagingCluster", "chat", sub="scale") or {}
    selector = scale["status"]["selector"]
    assert len(kube.list("Pod", selector)) == 3
    # Beyond max is clamped, and the condition says who owns the count.
    kube.cluster.kubectl("scale", "mc", "chat", "-n", kube.namespace, "--replicas=9")
    wait_until(lambda: deployment_replicas(kube) == 4, timeout=30, what="clamped to max 4")
    assert (kube.condition("chat", "ScalingActive") or {}).get("reason") == "ScalingDisabled"


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("patch", "deployments.apps", "yes"),
        ("create", "jobs.batch", "yes"),
        ("get", "messagingclusters.messaging.platform.io", "yes"),
        ("create", "events", "yes"),
        ("delete", "deployments.apps", "yes"),  # the managed Redis after a switch to external
        ("list", "secrets", "no"),
        ("watch", "secrets", "no"),
        ("patch", "secrets", "no"),
        ("update", "secrets", "no"),
        ("watch", "pods", "yes"),
        ("delete", "pods", "no"),
        ("update", "deployments.apps", "no"),
        ("patch", "jobs.batch", "no"),
        ("create", "pods", "no"),
        ("update", "messagingclusters.messaging.platform.io", "no"),
        ("delete", "messagingclusters.messaging.platform.io", "no"),
        ("create", "roles.rbac.authorization.k8s.io", "no"),
        ("list", "nodes", "no"),
    ],
)
def test_the_operator_may_do_what_it_needs_and_nothing_more(
    k8s_cluster: K8sCluster, operator_identity: str, verb: str, resource: str, allowed: str
) -> None:
    result = k8s_cluster.kubectl(
        "auth", "can-i", verb, resource, "--as", operator_identity, "-A", check=False
    )
    assert result.stdout.strip() == allowed, result.stderr
