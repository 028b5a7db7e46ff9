"""The operator running against the test control plane, with the permissions it ships with.

The operator under test is a real process (`python -m messaging_operator`), authenticated as the
ServiceAccount of deploy/operator/ with the ClusterRole from there, not as cluster admin: every
integration test therefore also proves that the shipped RBAC is enough.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operator.kubeapi import Kube
from tests.support.k8s import K8sCluster, wait_until
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "messagingclusters.messaging.platform.io.yaml"
RBAC = ROOT / "deploy" / "operator"
OPERATOR_NAMESPACE = "messaging-system"
OPERATOR_ACCOUNT = "messaging-operator"
RESYNC_SECONDS = 3
# Where the autoscaler reads the pods' /metrics: the operator's default (0), each cluster's
# spec.service.metricsPort (9090), where the service serves it (MESSAGING_METRICS_PORT).
POD_METRICS_PORT = 0
# Short leader-election timings, so a takeover in the tests takes seconds, not half a minute.
LEASE_ARGS = ("--lease-seconds", "8", "--renew-deadline-seconds", "6", "--retry-seconds", "2")


@dataclass
class RunningOperator:
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    kubeconfig: Path

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


def _apply(cluster: K8sCluster, *paths: Path) -> None:
    for path in paths:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))


@pytest.fixture(scope="session")
def messaging_crd(k8s_cluster: K8sCluster) -> Path:
    _apply(k8s_cluster, CRD)

    # Polled rather than `kubectl wait`, which fails at once (".status.conditions accessor
    # error") when it runs before the API server has written any condition.
    def established() -> bool:
        done = k8s_cluster.kubectl(
            "get",
            "crd/messagingclusters.messaging.platform.io",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Established')].status}",
            check=False,
        )
        return done.stdout.strip() == "True"

    wait_until(established, timeout=60, what="the MessagingCluster CRD to be established")
    return CRD


def operator_kubeconfig(cluster: K8sCluster, directory: Path) -> Path:
    """A kubeconfig holding the operator ServiceAccount's token (a TokenRequest)."""
    return cluster.service_account_kubeconfig(
        OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, directory / "operator.kubeconfig"
    )


def start_operator(
    cluster: K8sCluster,
    workdir: Path,
    *args: str,
    kubeconfig: Path,
    lease: str = "messaging-operator",
) -> RunningOperator:
    """A real operator process, up once its liveness endpoint answers (a standby that waits for
    the Lease answers it too)."""
    metrics_port, liveness_port = free_port(), free_port()
    log = workdir / f"operator-{metrics_port}.log"
    env = {**cluster.env(), "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "messaging_operator",
                "--metrics-port",
                str(metrics_port),
                "--liveness",
                f"http://127.0.0.1:{liveness_port}/healthz",
                "--resync-seconds",
                str(RESYNC_SECONDS),
                "--autoscale-seconds",
                "1",
                "--verbose",
                "--pod-metrics-port",
                str(POD_METRICS_PORT),
                "--lease-namespace",
                OPERATOR_NAMESPACE,
                "--lease-name",
                lease,
                *LEASE_ARGS,
                *args,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    running = RunningOperator(process, log, metrics_port, kubeconfig)

    def alive() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"the operator exited ({process.returncode}):\n{running.log_tail()}"
            )
        try:
            url = f"http://127.0.0.1:{liveness_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_until(alive, timeout=60, what="the operator's liveness endpoint")
    return running


def stop_operator(running: RunningOperator) -> None:
    if running.process.poll() is None:
        os.killpg(running.process.pid, signal.SIGTERM)
        try:
            running.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(running.process.pid, signal.SIGKILL)
            running.process.wait(timeout=10)


def lease_holder(cluster: K8sCluster, lease: str = "messaging-operator") -> str:
    result = cluster.kubectl(
        "get", "lease", lease, "-n", OPERATOR_NAMESPACE,
        "-o", "jsonpath={.spec.holderIdentity}", check=False,
    )  # fmt: skip
    return result.stdout.strip()


def leads(cluster: K8sCluster, running: RunningOperator, lease: str = "messaging-operator") -> bool:
    """The Lease's holder identity is <host>-<pid>-<random>."""
    return f"-{running.process.pid}-" in lease_holder(cluster, lease)


def hand_over(
    cluster: K8sCluster, current: RunningOperator, workdir: Path, *args: str
) -> RunningOperator:
    """Start another operator (a standby at first), stop `current` (a clean exit hands the
    Lease back) and wait until the new one leads."""
    new = start_operator(cluster, workdir, *args, kubeconfig=current.kubeconfig)
    stop_operator(current)
    wait_until(lambda: leads(cluster, new), timeout=60, what="the new operator leading")
    return new


def restore_session_operator(
    cluster: K8sCluster, session: RunningOperator, acting: RunningOperator, workdir: Path
) -> None:
    """After a test replaced the session's operator: one with the session's settings leads
    again, and the session fixture's handle points at it."""
    replacement = hand_over(cluster, acting, workdir, *SESSION_ARGS)
    session.process, session.log = replacement.process, replacement.log
    session.metrics_port = replacement.metrics_port


SESSION_ARGS = ("--all-namespaces",)


@pytest.fixture(scope="session")
def operator_identity(k8s_cluster: K8sCluster, messaging_crd: Path) -> str:
    """The ServiceAccount, ClusterRole, binding, Lease Role and admission policy exactly as
    deploy/operator/ ships them."""
    k8s_cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    _apply(
        k8s_cluster,
        RBAC / "service-account.yaml",
        RBAC / "cluster-role.yaml",
        RBAC / "cluster-role-binding.yaml",
        RBAC / "leader-election-role.yaml",
        RBAC / "admission-policy.yaml",
    )
    return f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"


@pytest.fixture(scope="session")
def operator(
    k8s_cluster: K8sCluster, operator_identity: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningOperator]:
    """One operator for the session, watching every namespace (each test has its own)."""
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = operator_kubeconfig(k8s_cluster, workdir)
    running = start_operator(k8s_cluster, workdir, *SESSION_ARGS, kubeconfig=kubeconfig)
    wait_until(lambda: leads(k8s_cluster, running), timeout=60, what="the operator leading")
    try:
        yield running
    finally:
        stop_operator(running)
        print(f"\noperator log: {running.log}")


@pytest.fixture
def kube(k8s_cluster: K8sCluster, k8s_namespace: str) -> Iterator[Kube]:
    api = Kube(k8s_cluster, k8s_namespace)
    try:
        yield api
    finally:
        api.session.close()


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_example(
    kube: Kube, example: str = "minimal.yaml", spec: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Create an example's Secrets and its MessagingCluster (spec changes merged in)."""
    cluster: dict[str, Any] | None = None
    for doc in yaml.safe_load_all((ROOT / "examples" / example).read_text()):
        if not doc:
            continue
        doc["metadata"]["namespace"] = kube.namespace
        if doc["kind"] == "MessagingCluster":
            doc["spec"] = deep_merge(doc["spec"], spec or {})
            cluster = kube.create(doc)
        else:
            kube.create(doc)
    assert cluster is not None, f"{example} has no MessagingCluster"
    return cluster
