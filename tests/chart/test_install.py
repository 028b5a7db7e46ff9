"""`helm install` and `helm uninstall` of the chart on the test control plane (kwok runs the pods).

Helm and CRDs: Helm creates what is in the chart's crds/ before the templates, only when it is
absent (an existing CRD is left as it is, and never upgraded), and `helm uninstall` never deletes
it, so uninstalling cannot take every MessagingCluster of the cluster with it. Upgrading the CRD
is `kubectl apply --server-side -f crds/` (or charts/messaging-operator/crds/).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chart.conftest import CHART, CRD_NAME, documents, wait_established
from tests.support.k8s import K8sCluster, wait_until


def exists(cluster: K8sCluster, kind: str, name: str, namespace: str | None) -> bool:
    scope = ["-n", namespace] if namespace else []
    result = cluster.kubectl("get", kind, name, *scope, "-o", "name", check=False)
    if result.returncode != 0 and "NotFound" not in result.stderr:
        raise AssertionError(result.stderr)
    return result.returncode == 0


def deployment(cluster: K8sCluster, name: str, namespace: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "json").stdout
    return dict(json.loads(out))


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return str(c["status"])
    return None


def test_helm_install_brings_the_operator_up_and_uninstall_removes_what_it_installed(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    release = f"mo-{secrets.token_hex(3)}"
    fullname = f"{release}-messaging-operator"
    installed = k8s_cluster.helm(
        "install", release, str(CHART), "--namespace", k8s_namespace,
        "--wait", "--timeout", "120s",
    )  # fmt: skip
    assert "STATUS: deployed" in installed.stdout
    assert "examples/minimal.yaml" in installed.stdout, "NOTES tell the next step"

    wait_established(k8s_cluster, CRD_NAME)
    operator = deployment(k8s_cluster, fullname, k8s_namespace)
    assert condition(operator, "Available") == "True"
    assert operator["status"]["readyReplicas"] == 2  # a leader and a standby
    pods = json.loads(
        k8s_cluster.kubectl(
            "get", "pods", "-n", k8s_namespace, "-o", "json",
            "-l", f"app.kubernetes.io/instance={release}",
        ).stdout
    )["items"]  # fmt: skip
    assert [p["status"]["phase"] for p in pods] == ["Running", "Running"]

    manifest = documents(k8s_cluster.helm("get", "manifest", release, "-n", k8s_namespace).stdout)
    objects = [(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in manifest]
    assert {kind for kind, _, _ in objects} == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment",
        "Role", "RoleBinding",  # the leader-election Lease
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    }  # fmt: skip
    assert all(exists(k8s_cluster, *o) for o in objects)
    assert "CustomResourceDefinition" not in {kind for kind, _, _ in objects}

    k8s_cluster.helm("uninstall", release, "--namespace", k8s_namespace, "--wait")

    def all_gone() -> bool:
        return not any(exists(k8s_cluster, *o) for o in objects)

    wait_until(all_gone, timeout=60, what=f"every object of {release} deleted")
    assert not exists(k8s_cluster, "ClusterRole", fullname, None)
    assert exists(k8s_cluster, "crd", CRD_NAME, None), "Helm never deletes crds/ on uninstall"


@pytest.fixture(scope="module")
def installed_cluster_wide(k8s_cluster: K8sCluster) -> Iterator[str]:
    """The chart installed with its defaults (watch every namespace); yields the identity of
    its ServiceAccount."""
    namespace = f"chart-rbac-{secrets.token_hex(3)}"
    release = f"mo-{secrets.token_hex(3)}"
    k8s_cluster.kubectl("create", "namespace", namespace)
    k8s_cluster.helm("install", release, str(CHART), "--namespace", namespace)
    try:
        yield f"system:serviceaccount:{namespace}:{release}-messaging-operator"
    finally:
        k8s_cluster.helm("uninstall", release, "--namespace", namespace, check=False)
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("watch", "messagingclusters.messaging.platform.io", "yes"),
        ("patch", "messagingclusters.messaging.platform.io/status", "yes"),
        ("create", "jobs.batch", "yes"),
        ("patch", "pods", "yes"),
        ("list", "secrets", "no"),
        ("delete", "secrets", "no"),
        ("delete", "deployments.apps", "yes"),  # the managed Redis after a switch to external
        ("patch", "secrets", "no"),
        ("update", "deployments.apps", "no"),
        ("create", "pods", "no"),
        ("delete", "messagingclusters.messaging.platform.io", "no"),
        ("create", "clusterroles.rbac.authorization.k8s.io", "no"),
        ("list", "nodes", "no"),
    ],
)
def test_the_cluster_wide_install_grants_what_the_operator_needs_and_nothing_more(
    k8s_cluster: K8sCluster, installed_cluster_wide: str, verb: str, resource: str, allowed: str
) -> None:
    result = k8s_cluster.kubectl(
        "auth", "can-i", verb, resource, "--as", installed_cluster_wide, "-A", check=False
    )
    assert result.stdout.strip() == allowed, result.stderr
