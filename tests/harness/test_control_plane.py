"""The Kubernetes test harness behaves like a real cluster where the operator's tests rely on it.

Each test proves one behaviour of the control plane started by tests/support/k8s.py: if one of
these fails, the operator's tests cannot be trusted either.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.k8s import TOOLS_SCRIPT, K8sCluster, wait_until

pytestmark = pytest.mark.k8s

NEVER_PULLED_IMAGE = "registry.invalid/never-pulled:1"  # kwok runs pods without pulling


@pytest.fixture
def api(k8s_cluster: K8sCluster) -> Iterator[client.ApiClient]:
    with k8s_cluster.api_client() as api_client:
        yield api_client


def _manifest(body: dict[str, Any]) -> Any:
    """The client takes plain dicts as request bodies at run time, though its type hints name
    only its models; manifests read better as the YAML they stand for."""
    return body


def _pinned(name: str) -> str:
    match = re.search(rf"^readonly {name}=(\S+)$", TOOLS_SCRIPT.read_text(), re.MULTILINE)
    assert match, f"{name} is not pinned in {TOOLS_SCRIPT}"
    return match.group(1)


def _pod_template(app: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app.kubernetes.io/name": app}},
        "spec": {"containers": [{"name": "main", "image": NEVER_PULLED_IMAGE}], **spec},
    }


def _has_condition(obj: Any, kind: str) -> bool:
    conditions = (obj.status.conditions if obj.status else None) or []
    return any(c.type == kind and c.status == "True" for c in conditions)


def test_server_reports_the_pinned_kubernetes_version(
    k8s_cluster: K8sCluster, api: client.ApiClient
) -> None:
    pinned = _pinned("K8S_VERSION")
    info = client.VersionApi(api).get_code()
    assert info.git_version == pinned
    assert k8s_cluster.version == pinned
    assert (info.major, info.minor) == ("1", pinned.split(".")[1])


def test_deployment_gets_a_replicaset_and_pods_that_kwok_runs_with_loopback_ips(
    k8s_cluster: K8sCluster, api: client.ApiClient, k8s_namespace: str
) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    deployment: Any = apps.create_namespaced_deployment(
        k8s_namespace,
        _manifest(
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app.kubernetes.io/name": "web"}},
                    "template": _pod_template("web"),
                },
            }
        ),
    )

    def owned_replicaset() -> Any:
        replicasets: list[Any] = apps.list_namespaced_replica_set(k8s_namespace).items
        for rs in replicasets:
            owners = rs.metadata.owner_references or []
            if any(ref.uid == deployment.metadata.uid for ref in owners):
                return rs
        return None

    replicaset = wait_until(owned_replicaset, what="the Deployment's ReplicaSet")

    def running_pods() -> list[Any] | None:
        pods: list[Any] = core.list_namespaced_pod(
            k8s_namespace, label_selector="app.kubernetes.io/name=web"
        ).items
        running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        return running if len(running) == 2 else None

    pods = wait_until(running_pods, what="2 Running pods")
    for pod in pods:
        assert pod.metadata.owner_references[0].uid == replicaset.metadata.uid
        assert pod.spec.node_name in k8s_cluster.node_names
        assert ipaddress.ip_address(pod.status.pod_ip) in k8s_cluster.pod_cidr
    assert len({pod.status.pod_ip for pod in pods}) == 2

    def available_replicas() -> int | None:
        current: Any = apps.read_namespaced_deployment("web", k8s_namespace)
        return current.status.available_replicas if current.status else None

    assert wait_until(
        lambda: available_replicas() == 2, what="the Deployment to report 2 available replicas"
    )


def test_job_runs_to_complete(api: client.ApiClient, k8s_namespace: str) -> None:
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(
        k8s_namespace,
        _manifest(
            {
                "metadata": {"name": "once"},
                "spec": {
                    "completions": 1,
                    "template": _pod_template("once", restartPolicy="Never"),
                },
            }
        ),
    )

    def completed_job() -> Any:
        job = batch.read_namespaced_job("once", k8s_namespace)
        return job if _has_condition(job, "Complete") else None

    job = wait_until(completed_job, what="the Job to be Complete")
    assert job.status.succeeded == 1
    assert not job.status.failed


WIDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["minReplicas", "maxReplicas"],
            "properties": {
                "minReplicas": {"type": "integer", "minimum": 1},
                "maxReplicas": {"type": "integer", "minimum": 1},
            },
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must not exceed maxReplicas",
                }
            ],
        }
    },
}


@pytest.fixture
def widget_crd(api: client.ApiClient) -> Iterator[str]:
    """A namespaced CRD (group returned) with a structural schema and a CEL rule; removed after
    the test. The group is random so that runs never see each other's leftovers."""
    group = f"h{secrets.token_hex(4)}.harness.messaging.test"
    name = f"widgets.{group}"
    extensions = client.ApiextensionsV1Api(api)
    version = {
        "name": "v1",
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "schema": {"openAPIV3Schema": WIDGET_SCHEMA},
    }
    extensions.create_custom_resource_definition(
        _manifest(
            {
                "metadata": {"name": name},
                "spec": {
                    "group": group,
                    "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [version],
                },
            }
        )
    )
    wait_until(
        lambda: _has_condition(extensions.read_custom_resource_definition(name), "Established"),
        what=f"CRD {name} to be Established",
    )
    try:
        yield group
    finally:
        extensions.delete_custom_resource_definition(name)


def test_crd_schema_and_cel_rule_reject_invalid_objects_server_side(
    api: client.ApiClient, k8s_namespace: str, widget_crd: str
) -> None:
    objects = client.CustomObjectsApi(api)

    def create(name: str, spec: dict[str, Any]) -> Any:
        body = {
            "apiVersion": f"{widget_crd}/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": spec,
        }
        return objects.create_namespaced_custom_object(
            widget_crd, "v1", k8s_namespace, "widgets", body
        )

    created = create("fine", {"minReplicas": 1, "maxReplicas": 3})
    assert created["spec"] == {"minReplicas": 1, "maxReplicas": 3}

    with pytest.raises(ApiException) as cel:
        create("inverted", {"minReplicas": 5, "maxReplicas": 2})
    assert cel.value.status == 422
    assert "minReplicas must not exceed maxReplicas" in str(cel.value.body)

    with pytest.raises(ApiException) as schema:
        create("too-small", {"minReplicas": 0, "maxReplicas": 2})
    assert schema.value.status == 422
    assert "spec.minReplicas" in str(schema.value.body)

    with pytest.raises(ApiException) as wrong_type:
        create("wrong-type", {"minReplicas": "one", "maxReplicas": 2})
    assert wrong_type.value.status == 422

    listed: Any = objects.list_namespaced_custom_object(widget_crd, "v1", k8s_namespace, "widgets")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["fine"]


def test_deleting_an_owner_garbage_collects_what_it_owns(
    api: client.ApiClient, k8s_namespace: str
) -> None:
    core = client.CoreV1Api(api)

    def config_map(name: str, owner: Any = None) -> Any:
        metadata: dict[str, Any] = {"name": name}
        if owner is not None:
            metadata["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name,
                 "uid": owner.metadata.uid}
            ]  # fmt: skip
        return core.create_namespaced_config_map(k8s_namespace, _manifest({"metadata": metadata}))

    owner = config_map("owner")
    config_map("owned", owner=owner)
    bystander = config_map("bystander")

    core.delete_namespaced_config_map("owner", k8s_namespace)

    def owned_is_gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", k8s_namespace)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    wait_until(owned_is_gone, what="the garbage collector to delete the owned ConfigMap")
    still_there: Any = core.read_namespaced_config_map("bystander", k8s_namespace)
    assert still_there.metadata.uid == bystander.metadata.uid


def _deployment_yaml(namespace: str, spec_extra: str = "", replicas: int = 1) -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: checked
  namespace: {namespace}
spec:
  replicas: {replicas}{spec_extra}
  selector:
    matchLabels:
      app.kubernetes.io/name: checked
  template:
    metadata:
      labels:
        app.kubernetes.io/name: checked
    spec:
      containers:
      - name: main
        image: {NEVER_PULLED_IMAGE}
"""


def test_kubectl_server_dry_run_validates_against_the_live_server_without_persisting(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(_deployment_yaml(k8s_namespace))
    accepted = k8s_cluster.kubectl("apply", "--dry-run=server", "-f", str(good), "-o", "name")
    assert accepted.stdout.strip() == "deployment.apps/checked"
    missing = k8s_cluster.kubectl("get", "deployment", "checked", "-n", k8s_namespace, check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr

    negative = tmp_path / "negative.yaml"
    negative.write_text(_deployment_yaml(k8s_namespace, replicas=-1))
    refused = k8s_cluster.kubectl("apply", "--dry-run=server", "-f", str(negative), check=False)
    assert refused.returncode != 0
    assert "spec.replicas" in refused.stderr

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(_deployment_yaml(k8s_namespace, spec_extra="\n  replicaz: 1"))
    strict = k8s_cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", str(unknown), check=False
    )
    assert strict.returncode != 0
    assert "replicaz" in strict.stderr


def test_helm_installs_a_chart_into_the_cluster(
    k8s_cluster: K8sCluster, api: client.ApiClient, k8s_namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-probe\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )

    assert k8s_cluster.helm("version", "--short").stdout.startswith(_pinned("HELM_VERSION"))
    k8s_cluster.helm(
        "install",
        "demo",
        str(chart),
        "--namespace",
        k8s_namespace,
        "--set",
        "greeting=hi",
        "--wait",
    )

    config_map: Any = client.CoreV1Api(api).read_namespaced_config_map("demo-probe", k8s_namespace)
    assert config_map.data == {"greeting": "hi"}
    releases = k8s_cluster.helm("list", "--namespace", k8s_namespace, "--short").stdout.split()
    assert releases == ["demo"]
