"""The README's "Quick start on kind" stays true: it cannot run here (no Docker, no kind), so the
commands are read from the README and what they apply is checked against the real API server.

- every manifest its `kubectl apply -f` lines name passes `kubectl apply --dry-run=server`
  (the MessagingCluster through the CRD's schema and CEL rules);
- its `helm install` line, with the same values, renders manifests that pass the dry run;
- the Secrets the manifests reference are the ones its `kubectl create secret` lines create;
- kind-config.yaml publishes exactly the NodePorts of examples/kind/nodeports.yaml.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, ROOT, documents
from tests.support.k8s import K8sCluster
from tests.support.servers import free_port

README = ROOT / "README.md"
KIND_CONFIG = ROOT / "kind-config.yaml"
NODEPORTS = ROOT / "examples" / "kind" / "nodeports.yaml"


def quickstart_section() -> str:
    text = README.read_text()
    start = text.index("## Quick start on kind")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def quickstart_commands() -> list[list[str]]:
    """The shell commands of the section's ```sh blocks, continuations joined, comments and
    heredoc bodies dropped, each split into words (variables left unexpanded)."""
    section = quickstart_section()
    commands: list[list[str]] = []
    for fenced in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        block = re.sub(r"<<'EOF'\n.*?\nEOF\n", "\n", fenced, flags=re.S)
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line, posix=True))
    return commands


def applied_files() -> list[str]:
    files = []
    for words in quickstart_commands():
        if words[0] == "kubectl" and "apply" in words:
            files += [words[i + 1] for i, w in enumerate(words) if w == "-f"]
    return files


def created_secrets() -> set[str]:
    return {
        words[words.index("generic") + 1]
        for words in quickstart_commands()
        if words[0] == "kubectl" and "generic" in words
    }


def secret_references(node: Any) -> set[str]:
    """Names of the Secrets a manifest refers to (secretKeyRef, and the spec's *SecretRef)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if (key == "secretKeyRef" or key.endswith("SecretRef")) and isinstance(value, dict):
                found.add(value["name"])
            else:
                found |= secret_references(value)
    elif isinstance(node, list):
        for item in node:
            found |= secret_references(item)
    return found


def test_the_quickstart_names_files_that_exist() -> None:
    files = applied_files()
    assert len(files) >= 4, files
    for words in quickstart_commands():
        for word in words:
            if word.startswith(("examples/", "charts/", "kind-config")):
                assert (ROOT / word).exists(), word
    assert any(w[:2] == ["docker", "build"] and "messaging:dev" in w for w in quickstart_commands())


def test_every_secret_the_quickstart_manifests_reference_is_created_by_it() -> None:
    referenced: set[str] = set()
    for path in applied_files():
        for doc in documents((ROOT / path).read_text()):
            referenced |= secret_references(doc)
    assert referenced == created_secrets() == {"postgres", "chat-db", "chat-jwt"}


def test_kind_config_publishes_the_nodeports_of_the_quickstart_services() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    (node,) = config["nodes"]
    mappings = {m["containerPort"]: m["hostPort"] for m in node["extraPortMappings"]}
    services = {
        p["name"]: p["nodePort"]
        for service in documents(NODEPORTS.read_text())
        for p in service["spec"]["ports"]
    }
    assert mappings == {services["http"]: 8000, services["grpc"]: 50051}
    assert all(30000 <= port <= 32767 for port in mappings)
    name = next(w for w in quickstart_commands() if w[:2] == ["kind", "load"])
    assert name[name.index("--name") + 1] == config["name"]


@pytest.mark.usefixtures("chart_crd")
def test_every_manifest_the_quickstart_applies_passes_a_server_side_dry_run(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    for secret in sorted(created_secrets()):
        k8s_cluster.kubectl(
            "-n", k8s_namespace, "create", "secret", "generic", secret,
            "--from-literal=password=x", "--from-literal=dsn=x", "--from-literal=secret=x",
        )  # fmt: skip
    arguments = [x for f in applied_files() for x in ("-f", str(ROOT / f))]
    result = k8s_cluster.kubectl("-n", k8s_namespace, "apply", "--dry-run=server", *arguments)
    lines = result.stdout.strip().splitlines()
    expected = sum(len(documents((ROOT / f).read_text())) for f in applied_files())
    assert len(lines) == expected and all(line.endswith("(server dry run)") for line in lines)
    assert any(line.startswith("messagingcluster.messaging.platform.io/chat") for line in lines)


def test_the_quickstart_helm_install_passes_a_server_side_dry_run(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    (install,) = [w for w in quickstart_commands() if w[:2] == ["helm", "install"]]
    release, chart = install[2], install[3]
    assert ROOT / chart == CHART
    values = [
        word
        for i, word in enumerate(install)
        if word.startswith("--set") or install[i - 1].startswith("--set")
    ]
    assert values, install
    manifest = k8s_cluster.helm(
        "template", release, str(CHART), "--namespace", k8s_namespace, *values
    ).stdout
    deployment = next(d for d in documents(manifest) if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "messaging:dev"  # the image `docker build` tagged
    result = k8s_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest)
    assert all(line.endswith("(server dry run)") for line in result.stdout.strip().splitlines())


@pytest.fixture
def quickstart_service(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`messaging serve` configured as examples/kind/cluster.yaml configures the pods
    (websocket only, an HS256 secret) behind the stand-in Connections service of
    examples/kind/connections.yaml (`dev-connections --all-connected`), on local ports.
    Yields the base URL and the JWT secret."""
    messaging = str(Path(sys.executable).parent / "messaging")
    http_port, grpc_port, connections_port = free_port(), free_port(), free_port()
    jwt_secret = secrets.token_urlsafe(48)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MESSAGING_")}
    env = base | {
        "MESSAGING_JWT_SECRET": jwt_secret,
        "MESSAGING_SOCKETIO_TRANSPORTS": '["websocket"]',
        "MESSAGING_CONNECTIONS_ADDRESS": f"127.0.0.1:{connections_port}",
        "MESSAGING_HTTP_PORT": str(http_port),
        "MESSAGING_GRPC_PORT": str(grpc_port),
        "MESSAGING_METRICS_PORT": str(free_port()),
    }
    log = (tmp_path / "processes.log").open("wb")
    processes = [
        subprocess.Popen(
            [messaging, "dev-connections", "--all-connected", "--port", str(connections_port)],
            env=base, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
        subprocess.Popen(
            [messaging, "serve"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
    ]  # fmt: skip
    try:
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 60
        while True:
            exited = [p.args for p in processes if p.poll() is not None]
            assert not exited, (tmp_path / "processes.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the service did not become ready"
                time.sleep(0.2)
        yield url, jwt_secret
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def test_the_quickstart_client_sends_a_message(quickstart_service: tuple[str, str]) -> None:
    """The README's token command and client snippet, run as written against a local service
    set up like the kind cluster (only the URL's port differs)."""
    url, jwt_secret = quickstart_service
    (snippet,) = re.findall(r"<<'EOF'\n(.*?)\nEOF\n", quickstart_section(), flags=re.S)
    assert "http://127.0.0.1:8000" in snippet
    messaging = str(Path(sys.executable).parent / "messaging")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESSAGING_")}
    token = subprocess.run(
        [messaging, "token", "alice"], env=env | {"MESSAGING_JWT_SECRET": jwt_secret},
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-"],
        input=snippet.replace("http://127.0.0.1:8000", url),
        env=env | {"TOKEN": token}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "'ok': True" in result.stdout and "'content': 'hi'" in result.stdout
