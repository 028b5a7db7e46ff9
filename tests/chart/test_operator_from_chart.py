"""The operator, started the way the chart starts it, reconciles a MessagingCluster with the
chart's RBAC, and that RBAC refuses anything more.

The chart is installed with a namespaced watch (a Role in the watched namespace only). kwok
only pretends to run the operator's pod, so the operator runs here as a local process: the
command, arguments and environment are read from the Deployment Helm created, and it
authenticates with a token of the chart's ServiceAccount (not as cluster admin), as in a pod.
The same way, the whole-platform release's pre-delete hook runs as `helm get hooks` shows it.

Another operator watching every namespace (tests/operator's, if it ran earlier in the session)
could also act on these clusters; the assertions read this process's own metrics and log, so
they hold either way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
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

from tests.chart.conftest import CHART, PLATFORM_VALUES, ROOT, documents
from tests.support.k8s import K8sCluster, wait_until
from tests.support.servers import free_port

EXAMPLE = ROOT / "examples" / "minimal.yaml"


@dataclass(frozen=True)
class NamespacedRelease:
    """The chart installed with a namespaced watch: in `namespace`, watching `watched`."""

    release: str
    namespace: str
    watched: str
    deployment: dict[str, Any]
    metrics_port: int
    liveness_port: int

    @property
    def account(self) -> str:
        return str(self.deployment["spec"]["template"]["spec"]["serviceAccountName"])

    @property
    def identity(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.account}"


@dataclass(frozen=True)
class ChartOperator:
    process: subprocess.Popen[bytes]
    log: Path
    kubeconfig: Path
    installed: NamespacedRelease

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        url = f"http://127.0.0.1:{self.installed.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = re.escape(f"{name}{{{selector}}}" if labels else name) + r" (\S+)"
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0


def token_kubeconfig(cluster: K8sCluster, account: str, namespace: str, path: Path) -> Path:
    return cluster.service_account_kubeconfig(account, namespace, path, duration="1h")


def operator_process_args(
    container: dict[str, Any], namespace: str
) -> tuple[list[str], dict[str, str]]:
    """The container's command line and environment, with the image's `messaging` replaced by
    the same console script of this virtualenv (and the pod's namespace filled in, as the
    kubelet does for a fieldRef)."""
    command = [*container["command"], *container.get("args", [])]
    assert command[0] == "messaging", command
    script = Path(sys.executable).parent / "messaging"
    env: dict[str, str] = {}
    for item in container.get("env", []):
        field_ref = (item.get("valueFrom") or {}).get("fieldRef") or {}
        if field_ref.get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
            continue
        assert "value" in item, f"only literal values can be reproduced here: {item}"
        env[item["name"]] = item["value"]
    return [str(script), *command[1:]], env


def install_namespaced(
    cluster: K8sCluster, release: str, namespace: str, watched: str, *values: str
) -> NamespacedRelease:
    """`helm install` watching one namespace, with the operator's ports on free local ports
    (in a pod they are the pod's own); extra values options are appended."""
    metrics_port, liveness_port = free_port(), free_port()
    cluster.helm(
        "install", release, str(CHART), "--namespace", namespace, "--wait",
        "--set", "watch.allNamespaces=false",
        "--set", f"watch.namespaces={{{watched}}}",
        "--set", f"operator.metricsPort={metrics_port}",
        "--set", f"operator.livenessPort={liveness_port}",
        *values,
    )  # fmt: skip
    deployment = json.loads(
        cluster.kubectl(
            "get", "deployment", f"{release}-messaging-operator", "-n", namespace, "-o", "json"
        ).stdout
    )  # fmt: skip
    return NamespacedRelease(release, namespace, watched, deployment, metrics_port, liveness_port)


@contextlib.contextmanager
def operator_as_the_chart_runs_it(
    cluster: K8sCluster, installed: NamespacedRelease, workdir: Path
) -> Iterator[ChartOperator]:
    (container,) = installed.deployment["spec"]["template"]["spec"]["containers"]
    argv, rendered_env = operator_process_args(container, installed.namespace)
    kubeconfig = token_kubeconfig(
        cluster, installed.account, installed.namespace, workdir / "operator.kubeconfig"
    )
    # A pod's environment: the container's variables and nothing of this machine's MESSAGING_*.
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "KUBECONFIG": str(kubeconfig),
        **rendered_env,
    }
    log = workdir / "operator.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv, env=env, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    running = ChartOperator(process=process, log=log, kubeconfig=kubeconfig, installed=installed)

    def alive() -> bool:
        assert process.poll() is None, f"the operator exited:\n{running.log_text()[-4000:]}"
        try:
            url = f"http://127.0.0.1:{installed.liveness_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until(alive, timeout=60, what="the operator's liveness endpoint (from the chart)")
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        print(f"\noperator log: {log}")


@pytest.fixture(scope="module")
def namespaced_release(k8s_cluster: K8sCluster) -> Iterator[NamespacedRelease]:
    suffix = secrets.token_hex(3)
    namespace, watched = f"chart-op-{suffix}", f"chart-apps-{suffix}"
    for name in (namespace, watched):
        k8s_cluster.kubectl("create", "namespace", name)
    release = f"mo-{suffix}"
    try:
        yield install_namespaced(k8s_cluster, release, namespace, watched)
    finally:
        k8s_cluster.helm("uninstall", release, "--namespace", namespace, check=False)
        for name in (namespace, watched):
            k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def chart_operator(
    k8s_cluster: K8sCluster, namespaced_release: NamespacedRelease, tmp_path: Path
) -> Iterator[ChartOperator]:
    with operator_as_the_chart_runs_it(k8s_cluster, namespaced_release, tmp_path) as running:
        yield running


def get(cluster: K8sCluster, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def apply_minimal_example(
    cluster: K8sCluster, namespace: str, *, secrets_only: bool = False
) -> None:
    docs = documents(EXAMPLE.read_text())
    if secrets_only:
        docs = [d for d in docs if d["kind"] == "Secret"]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def wait_running(cluster: K8sCluster, namespace: str, name: str = "chat") -> None:
    def running() -> bool:
        body = get(cluster, "messagingcluster", name, namespace) or {}
        return (body.get("status") or {}).get("phase") == "Running"

    wait_until(running, timeout=120, interval=0.5, what=f"MessagingCluster {name} Running")


@pytest.mark.usefixtures("chart_crd")
def test_the_operator_as_the_chart_runs_it_reconciles_the_minimal_example_to_running(
    k8s_cluster: K8sCluster, chart_operator: ChartOperator
) -> None:
    namespace = chart_operator.installed.watched
    apply_minimal_example(k8s_cluster, namespace)
    wait_running(k8s_cluster, namespace)

    for kind, name in [
        ("deployment", "chat"),
        ("deployment", "chat-redis"),
        ("service", "chat"),
        ("service", "chat-grpc"),
        ("service", "chat-redis"),
        ("secret", "chat-redis"),
        ("poddisruptionbudget", "chat"),
    ]:
        assert get(k8s_cluster, kind, name, namespace) is not None, f"{kind} {name}"
    jobs = json.loads(
        k8s_cluster.kubectl(
            "get", "jobs", "-n", namespace, "-o", "json",
            "-l", "app.kubernetes.io/instance=chat,app.kubernetes.io/component=migration",
        ).stdout
    )["items"]  # fmt: skip
    assert jobs and all(job["status"].get("succeeded") == 1 for job in jobs)

    # This process did the work, and nothing it tried was refused.
    assert chart_operator.metric("messaging_operator_reconciles_total", outcome="success") >= 1
    assert chart_operator.metric("messaging_operator_reconciles_total", outcome="api_error") == 0
    refused = re.findall(r".*(?:\b403\b|Forbidden).*", chart_operator.log_text())
    assert refused == []
    events = json.loads(
        k8s_cluster.kubectl(
            "get", "events", "-n", namespace, "-o", "json", "--field-selector", "reason=Forbidden"
        ).stdout
    )["items"]
    assert events == []


@pytest.mark.parametrize(
    ("verb", "resource", "where", "allowed"),
    [
        ("patch", "deployments.apps", "watched", "yes"),
        ("create", "jobs.batch", "watched", "yes"),
        ("get", "secrets", "watched", "yes"),
        ("list", "secrets", "watched", "no"),
        ("delete", "secrets", "watched", "no"),
        ("delete", "pods", "watched", "no"),
        ("get", "messagingclusters.messaging.platform.io", "own", "no"),
        ("create", "deployments.apps", "own", "no"),
        ("list", "messagingclusters.messaging.platform.io", "all", "no"),
        ("list", "secrets", "all", "no"),
    ],
)
def test_the_namespaced_install_grants_nothing_outside_the_watched_namespace(  # noqa: PLR0917
    k8s_cluster: K8sCluster,
    namespaced_release: NamespacedRelease,
    verb: str,
    resource: str,
    where: str,
    allowed: str,
) -> None:
    scope = {
        "watched": ["-n", namespaced_release.watched],
        "own": ["-n", namespaced_release.namespace],
        "all": ["-A"],
    }[where]
    identity = namespaced_release.identity
    result = k8s_cluster.kubectl(
        "auth", "can-i", verb, resource, "--as", identity, *scope, check=False
    )
    assert result.stdout.strip() == allowed, result.stderr


def test_the_operator_token_is_refused_listing_secrets(
    k8s_cluster: K8sCluster, namespaced_release: NamespacedRelease, tmp_path: Path
) -> None:
    """An actual request with the operator's credentials, not only the authorizer's opinion."""
    kubeconfig = token_kubeconfig(
        k8s_cluster, namespaced_release.account, namespaced_release.namespace,
        tmp_path / "operator.kubeconfig",
    )  # fmt: skip
    result = k8s_cluster.kubectl(
        "--kubeconfig", str(kubeconfig), "get", "secrets", "-n", namespaced_release.watched,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Forbidden" in result.stderr and 'cannot list resource "secrets"' in result.stderr


@pytest.mark.usefixtures("chart_crd")
def test_uninstalling_the_whole_platform_deletes_the_cluster_before_the_operator(
    k8s_cluster: K8sCluster, k8s_namespace: str, other_namespace: str, tmp_path: Path
) -> None:
    """With cluster.enabled the release owns a MessagingCluster, which carries the operator's
    finalizer. The pre-delete hook, run as `helm get hooks` shows it (same command, its own
    ServiceAccount's token), deletes the cluster and returns once the operator released it;
    then `helm uninstall` removes the rest. (kwok would only pretend to run the hook's pod.)"""
    apply_minimal_example(k8s_cluster, other_namespace, secrets_only=True)
    release = f"mp-{secrets.token_hex(3)}"
    installed = install_namespaced(
        k8s_cluster, release, k8s_namespace, other_namespace,
        "-f", str(PLATFORM_VALUES), "--set", f"cluster.namespace={other_namespace}",
    )  # fmt: skip
    with operator_as_the_chart_runs_it(k8s_cluster, installed, tmp_path):
        wait_running(k8s_cluster, other_namespace)
        cluster = get(k8s_cluster, "messagingcluster", "chat", other_namespace) or {}
        assert cluster["metadata"].get("finalizers"), "the operator holds a finalizer"

        hooks = documents(k8s_cluster.helm("get", "hooks", release, "-n", k8s_namespace).stdout)
        (job,) = hooks
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        command = container["command"]
        assert command[0] == "python"  # the image's Python, which has the kubernetes client
        account = pod["serviceAccountName"]
        kubeconfig = token_kubeconfig(
            k8s_cluster, account, k8s_namespace, tmp_path / "hook.kubeconfig"
        )
        identity = f"system:serviceaccount:{k8s_namespace}:{account}"
        for verb, resource in [("delete", "deployments.apps"), ("list", "secrets")]:
            refused = k8s_cluster.kubectl(
                "auth", "can-i", verb, resource, "--as", identity, "-n", other_namespace,
                check=False,
            )  # fmt: skip
            assert refused.stdout.strip() == "no"
        hook = subprocess.run(
            [sys.executable, *command[1:]],
            env={"PATH": os.environ["PATH"], "KUBECONFIG": str(kubeconfig)},
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert hook.returncode == 0, hook.stdout + hook.stderr
        assert "is gone" in hook.stdout
        assert get(k8s_cluster, "messagingcluster", "chat", other_namespace) is None
        wait_until(
            lambda: get(k8s_cluster, "deployment", "chat", other_namespace) is None,
            timeout=60, what="the cluster's children garbage-collected",
        )  # fmt: skip

    manifest = documents(k8s_cluster.helm("get", "manifest", release, "-n", k8s_namespace).stdout)
    k8s_cluster.helm("uninstall", release, "--namespace", k8s_namespace, "--wait")
    for doc in manifest:
        meta = doc["metadata"]
        scope = ["-n", meta["namespace"]] if meta.get("namespace") else []
        gone = k8s_cluster.kubectl("get", doc["kind"], meta["name"], *scope, check=False)
        assert "NotFound" in gone.stderr, (doc["kind"], meta["name"])


def deployment_manifest(name: str, labels: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name, **labels}},
                    "spec": {"containers": [{"name": "c", "image": "registry.example/x:1"}]},
                },
            },
        }
    )


def test_the_admission_policy_lets_the_operator_write_only_its_own_objects(
    k8s_cluster: K8sCluster, namespaced_release: NamespacedRelease
) -> None:
    """RBAC allows creating any Deployment in a watched namespace; the chart's
    ValidatingAdmissionPolicy refuses one the operator would not have labelled as its own."""
    identity = namespaced_release.identity

    def create(name: str, labels: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return k8s_cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", "--as", identity,
            "-n", namespaced_release.watched,
            input=deployment_manifest(name, labels), check=False,
        )  # fmt: skip

    def refused() -> bool:
        result = create("not-ours", {"team": "payments"})
        return result.returncode != 0 and "writes only objects labelled" in result.stderr

    # The API server compiles a new policy within a second or so.
    wait_until(refused, timeout=30, what="the admission policy refusing a foreign Deployment")
    ours = create("ours", {"app.kubernetes.io/managed-by": "messaging-operator"})
    assert ours.returncode == 0, ours.stderr
