"""Fixtures of the chart and image tests: the chart's paths, rendering with the harness's helm,
the prometheus-operator CRD stand-ins and extra namespaces on the test control plane."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.k8s import K8sCluster, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "messaging-operator"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
PLATFORM_VALUES = CHART / "ci" / "platform-values.yaml"
VALUES_FILES = {"default": None, "production": PRODUCTION_VALUES, "platform": PLATFORM_VALUES}
CRD_NAME = "messagingclusters.messaging.platform.io"
MONITORING_CRDS = Path(__file__).with_name("monitoring-crds.yaml")


def render(cluster: K8sCluster, *args: str, release: str = "r", namespace: str = "ops") -> str:
    """`helm template` of the chart; the arguments are values options (-f, --set ...)."""
    return cluster.helm("template", release, str(CHART), "--namespace", namespace, *args).stdout


def documents(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = by_kind(docs, kind)
    return found


def wait_established(cluster: K8sCluster, crd: str) -> None:
    """Polls instead of `kubectl wait`, which fails at once (instead of waiting) when it reads a
    CRD created so recently that it has no status.conditions yet."""

    def established() -> bool:
        jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
        result = cluster.kubectl("get", "crd", crd, "-o", f"jsonpath={jsonpath}", check=False)
        return result.stdout.strip() == "True"

    wait_until(established, timeout=60, what=f"CRD {crd} Established")


@pytest.fixture(scope="session")
def monitoring_crds(k8s_cluster: K8sCluster) -> None:
    k8s_cluster.kubectl("apply", "--server-side", "-f", str(MONITORING_CRDS))
    for crd in ("servicemonitors", "podmonitors", "prometheusrules"):
        wait_established(k8s_cluster, f"{crd}.monitoring.coreos.com")


@pytest.fixture(scope="session")
def chart_crd(k8s_cluster: K8sCluster) -> None:
    """The chart's copy of the MessagingCluster CRD, as Helm would install it (kept if another
    test installed it already: the CRD is the same file)."""
    crd = CHART / "crds" / f"{CRD_NAME}.yaml"
    k8s_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    wait_established(k8s_cluster, CRD_NAME)


@pytest.fixture
def other_namespace(k8s_cluster: K8sCluster, k8s_namespace: str) -> Iterator[str]:
    """A second fresh namespace next to k8s_namespace (e.g. the one an operator watches)."""
    name = f"{k8s_namespace[:50]}-b{secrets.token_hex(2)}"
    k8s_cluster.kubectl("create", "namespace", name)

    def has_default_account() -> bool:
        result = k8s_cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False)
        return result.returncode == 0

    wait_until(has_default_account, timeout=60, what=f"ServiceAccount {name}/default")
    try:
        yield name
    finally:
        k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
