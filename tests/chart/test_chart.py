"""The Helm chart renders, lints, refuses bad values, and every object it renders is accepted by a
real API server (`kubectl apply --dry-run=server`): defaults, the production-like values file
(charts/messaging-operator/ci/production-values.yaml) and the whole-platform switch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    CRD_NAME,
    PLATFORM_VALUES,
    PRODUCTION_VALUES,
    ROOT,
    VALUES_FILES,
    by_kind,
    documents,
    one,
    render,
)
from tests.support.k8s import K8sCluster

KIND_CLUSTER = ROOT / "examples" / "kind" / "cluster.yaml"


def kind_cluster_spec() -> dict[str, Any]:
    (cluster,) = documents(KIND_CLUSTER.read_text())
    return dict(cluster["spec"])


def values_args(values: str) -> list[str]:
    path = VALUES_FILES[values]
    return ["-f", str(path)] if path else []


def is_lease_rbac(doc: dict[str, Any]) -> bool:
    return str(doc["metadata"]["name"]).endswith("-leader-election")


def test_the_chart_crd_is_identical_to_the_top_level_crd() -> None:
    top = sorted(p.name for p in (ROOT / "crds").iterdir())
    chart = sorted(p.name for p in (CHART / "crds").iterdir())
    assert chart == top
    for name in top:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/messaging-operator/crds/{name} differs from crds/{name}: "
            "cp crds/*.yaml charts/messaging-operator/crds/"
        )


def test_the_chart_version_and_app_version_follow_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    version = next(
        line.split('"')[1]
        for line in (ROOT / "pyproject.toml").read_text().splitlines()
        if line.startswith("version = ")
    )
    assert chart["appVersion"] == version


def test_helm_show_crds_gives_the_top_level_crd(k8s_cluster: K8sCluster) -> None:
    shown = k8s_cluster.helm("show", "crds", str(CHART)).stdout
    crds = documents(shown)
    assert [c["metadata"]["name"] for c in crds] == [CRD_NAME]
    top = yaml.safe_load((ROOT / "crds" / f"{CRD_NAME}.yaml").read_text())
    assert crds[0] == top


@pytest.mark.parametrize("values", sorted(VALUES_FILES))
def test_helm_lint_strict_passes(k8s_cluster: K8sCluster, values: str) -> None:
    result = k8s_cluster.helm("lint", "--strict", str(CHART), *values_args(values))
    assert "0 chart(s) failed" in result.stdout


def test_the_default_values_render_a_cluster_wide_operator(k8s_cluster: K8sCluster) -> None:
    docs = documents(render(k8s_cluster))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",  # the leader-election Lease, in the release namespace only
            "RoleBinding",
            "Service",
            "Deployment",
            "ValidatingAdmissionPolicy",  # writes only to the operator's own objects
            "ValidatingAdmissionPolicyBinding",
        ]
    )
    policy = one(docs, "ValidatingAdmissionPolicy")
    (condition,) = policy["spec"]["matchConditions"]
    assert "system:serviceaccount:ops:r-messaging-operator" in condition["expression"]
    lease_role = one(docs, "Role")
    assert lease_role["metadata"]["namespace"] == "ops"
    binding = one(docs, "ClusterRoleBinding")
    account = one(docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": "ops"}
    ]
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["messaging"]
    assert container["args"] == ["operator", "--all-namespaces"]


def test_the_production_values_render_namespaced_rbac_and_monitoring(
    k8s_cluster: K8sCluster,
) -> None:
    docs = documents(render(k8s_cluster, "-f", str(PRODUCTION_VALUES)))
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    watched = yaml.safe_load(PRODUCTION_VALUES.read_text())["watch"]["namespaces"]
    for kind in ("Role", "RoleBinding"):
        watching = [d for d in by_kind(docs, kind) if not is_lease_rbac(d)]
        assert sorted(d["metadata"]["namespace"] for d in watching) == sorted(watched)
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "ops"
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    expected = ["operator"] + [arg for ns in watched for arg in ("--namespace", ns)]
    assert container["args"] == expected
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "384Mi"}

    monitors = by_kind(docs, "ServiceMonitor") + by_kind(docs, "PodMonitor")
    assert len(monitors) == 2
    clusters = one(docs, "PodMonitor")  # the pods' own metrics port: no Service exposes it
    assert clusters["metadata"]["name"].endswith("-clusters")
    assert clusters["spec"]["namespaceSelector"] == {"matchNames": watched}
    assert clusters["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert all(m["metadata"]["labels"]["release"] == "kube-prometheus-stack" for m in monitors)
    # The alert rules select the pods and the operator by these job names, per cluster.
    [pods_relabel] = [e["relabelings"] for e in clusters["spec"]["podMetricsEndpoints"]]
    assert {"targetLabel": "job", "replacement": "messaging"} in pods_relabel
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
        "targetLabel": "cluster",
    } in pods_relabel
    [operator_relabel] = [
        e["relabelings"] for e in one(docs, "ServiceMonitor")["spec"]["endpoints"]
    ]
    assert operator_relabel == [{"targetLabel": "job", "replacement": "messaging-operator"}]

    rule = one(docs, "PrometheusRule")
    shipped = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rule["spec"] == shipped
    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped_dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["messaging.json"]) == shipped_dashboard


def test_the_deployment_runs_a_leader_and_a_standby_non_root_with_a_liveness_probe(
    k8s_cluster: K8sCluster,
) -> None:
    deployment = one(documents(render(k8s_cluster)), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2  # one leads through the Lease, one waits
    assert spec["strategy"]["type"] == "RollingUpdate"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int)
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["MESSAGING_OPERATOR_LEASE_NAME"] == deployment["metadata"]["name"]
    lease_ns = next(
        e for e in container["env"] if e["name"] == "MESSAGING_OPERATOR_LEASE_NAMESPACE"
    )
    assert lease_ns["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    liveness_port = next(p for p in container["ports"] if p["name"] == "liveness")
    assert env["MESSAGING_OPERATOR_LIVENESS"] == (
        f"http://0.0.0.0:{liveness_port['containerPort']}/healthz"
    )
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    metrics_port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert env["MESSAGING_OPERATOR_METRICS_PORT"] == str(metrics_port["containerPort"])
    assert container["resources"]["requests"] and container["resources"]["limits"]


@pytest.mark.parametrize("values", ["default", "production"])
def test_the_rbac_rules_are_the_ones_deploy_operator_documents(
    k8s_cluster: K8sCluster, values: str
) -> None:
    docs = documents(render(k8s_cluster, *values_args(values)))
    roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
    assert roles
    shipped = yaml.safe_load((ROOT / "deploy" / "operator" / "cluster-role.yaml").read_text())
    lease = next(
        yaml.safe_load_all((ROOT / "deploy" / "operator" / "leader-election-role.yaml").read_text())
    )
    for role in roles:
        if is_lease_rbac(role):
            names = {"r-messaging-operator"}
            assert {n for r in role["rules"] for n in r.get("resourceNames", [])} == names
            assert [r["verbs"] for r in role["rules"]] == [r["verbs"] for r in lease["rules"]]
        else:
            assert role["rules"] == shipped["rules"]


GRANTS = Path(__file__).with_name("rbac-grants.txt")


def grants(docs: list[dict[str, Any]]) -> set[str]:
    """Every (scope, API group, resource, verb, names) the chart's roles grant, one per line."""
    found = set()
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        scope = "cluster" if role["kind"] == "ClusterRole" else "namespace"
        for rule in role["rules"]:
            names = ",".join(rule.get("resourceNames", [])) or "*"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        found.add(f"{scope} {group or 'core'} {resource} {verb} {names}")
    return found


@pytest.mark.parametrize("values", ["default", "production"])
def test_every_permission_the_chart_grants_is_on_the_reviewed_list(
    k8s_cluster: K8sCluster, values: str
) -> None:
    """A new verb or resource must be added to rbac-grants.txt on purpose, in review."""
    granted = grants(documents(render(k8s_cluster, *values_args(values))))
    listed = {
        line.strip()
        for line in GRANTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    scope = "cluster" if values == "default" else "namespace"
    expected = {g for g in listed if g.startswith(scope) or "leases" in g}
    assert sorted(granted - expected) == [], "granted but not on the reviewed list"
    assert sorted(expected - granted) == [], "on the list but no longer granted"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["--set-string", "watch.allNamespaces=yes"], "/watch/allNamespaces"),
        (["--set", "operator.metricsPort=70000"], "/operator/metricsPort"),
        (["--set", "watch.namespaces={Not_A_Namespace}"], "/watch/namespaces/0"),
        (["--set", "operator.logFormat=xml"], "/operator/logFormat"),
        (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "cluster.enabled=true"], "/cluster/spec"),
        (["--set", "metrics.serviceMonitor.interval=often"], "/metrics/serviceMonitor/interval"),
    ],
)
def test_bad_values_are_refused_by_the_schema(
    k8s_cluster: K8sCluster, args: list[str], complaint: str
) -> None:
    result = k8s_cluster.helm("template", "r", str(CHART), *args, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr


def test_a_cluster_in_an_unwatched_namespace_is_refused(k8s_cluster: K8sCluster) -> None:
    result = k8s_cluster.helm(
        "template", "r", str(CHART), "--namespace", "ops",
        "--set", "watch.allNamespaces=false", "--set", "watch.namespaces={apps}",
        "--set", "cluster.enabled=true", "--set", "cluster.namespace=elsewhere",
        "--set-json", f"cluster.spec={json.dumps(kind_cluster_spec())}",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "cluster.namespace elsewhere is not watched" in result.stderr


def test_the_platform_values_render_the_kind_quickstart_cluster(k8s_cluster: K8sCluster) -> None:
    docs = documents(render(k8s_cluster, "-f", str(PLATFORM_VALUES)))
    cluster = one(docs, "MessagingCluster")
    assert cluster["apiVersion"] == "messaging.platform.io/v1alpha1"
    assert cluster["metadata"]["name"] == "chat"
    assert cluster["metadata"]["namespace"] == "ops"
    assert cluster["spec"] == kind_cluster_spec()


def dry_run(cluster: K8sCluster, manifest: str) -> list[str]:
    """`kubectl apply --dry-run=server`: every object goes through admission, the schema (CEL
    included) and RBAC escalation checks, without being stored. Returns kubectl's lines."""
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest)
    return result.stdout.strip().splitlines()


@pytest.mark.usefixtures("monitoring_crds", "chart_crd")
@pytest.mark.parametrize("values", sorted(VALUES_FILES))
def test_every_rendered_manifest_passes_a_server_side_dry_run(
    k8s_cluster: K8sCluster, k8s_namespace: str, other_namespace: str, values: str
) -> None:
    if values == "production":
        # The production file's namespaces, replaced by two that exist on this control plane.
        watched = f"{{{k8s_namespace},{other_namespace}}}"
        args = ["-f", str(PRODUCTION_VALUES), "--set", f"watch.namespaces={watched}"]
    else:
        args = values_args(values)
    manifest = render(k8s_cluster, "--include-crds", *args, namespace=k8s_namespace)
    docs = documents(manifest)
    lines = dry_run(k8s_cluster, manifest)
    assert len(lines) == len(docs), lines
    assert all(line.endswith("(server dry run)") for line in lines), lines
    if values == "production":
        assert {"ServiceMonitor", "PrometheusRule", "ConfigMap", "Role"} <= {
            d["kind"] for d in docs
        }


@pytest.mark.usefixtures("chart_crd")
def test_the_server_dry_run_refuses_values_the_api_server_would_refuse(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    """The schema leaves pass-through Kubernetes fields (tolerations, affinity ...) to the API
    server; the dry run is where such a mistake shows before anything is installed."""
    manifest = render(
        k8s_cluster,
        "--set-json", 'tolerations=[{"key": "dedicated", "effect": "Sometimes"}]',
        namespace=k8s_namespace,
    )  # fmt: skip
    result = k8s_cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=manifest, check=False
    )
    assert result.returncode != 0
    assert 'Unsupported value: "Sometimes"' in result.stderr


def test_the_alerts_runbook_links_follow_the_runbook_base_value(k8s_cluster: K8sCluster) -> None:
    base = "https://wiki.example.com/messaging/runbooks"
    values = ["prometheusRule.enabled=true", f"prometheusRule.runbookBaseUrl={base}"]
    docs = documents(render(k8s_cluster, *(arg for v in values for arg in ("--set", v))))
    rules = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert len(rules) >= 12
    for rule in rules:
        assert rule["annotations"]["runbook_url"] == f"{base}#{rule['alert'].lower()}"
