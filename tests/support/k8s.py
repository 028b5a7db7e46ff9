"""A real Kubernetes control plane for the tests, started from binaries built by hack/k8s-tools.sh.

The operator is only worth testing against a real API server: CRD schema and CEL validation, the
status subresource, ownerReferences and garbage collection, watches and RBAC are all behaviour of
the server, and a mock would only repeat our assumptions back to us. There is no Docker engine
here, so instead of kind this runs the components as plain processes on loopback:

    etcd -> kube-apiserver -> kube-controller-manager, kube-scheduler, kwok

kwok stands in for the kubelets. It keeps the fake node(s) Ready, marks scheduled pods Running
and completes the pods of Jobs, so Deployments, ReplicaSets and Jobs behave as on a cluster.

Pod IPs: kwok hands every pod an address from ``POD_CIDR`` (127.0.100.0/24, the fake node's
podCIDR). Any address in 127.0.0.0/8 is loopback on Linux, so a test can run the real service
process bound to "its" pod's IP. The API server refuses loopback addresses in Endpoints and
EndpointSlices, so a Service that selects such pods gets no endpoints here: connect to pod IPs.

Public surface:
    k8s_cluster (session fixture) -> K8sCluster
    k8s_namespace (function fixture) -> str, a fresh namespace deleted after the test
    K8sCluster: kubeconfig, server, bin_dir, work_dir, ca_cert, client_cert, client_key,
        version, audit_log, pod_cidr, service_cidr, node_names; api_client(), kubectl(*args),
        helm(*args), env()
    wait_until(condition, timeout=..., what=...) for polling the cluster in tests
    POD_CIDR, SERVICE_CIDR, NODE_NAMES
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import http.client
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.client
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.servers import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_SCRIPT = REPO_ROOT / "hack" / "k8s-tools.sh"

POD_CIDR = ipaddress.IPv4Network("127.0.100.0/24")
# Cluster IPs are never routed here (there is no kube-proxy); keeping them in loopback too means
# a test that connects to one by mistake cannot send traffic off the machine.
SERVICE_CIDR = ipaddress.IPv4Network("127.0.200.0/24")
NODE_NAMES = ("kwok-node-0",)
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

STARTUP_TIMEOUT = 90.0
STOP_GRACE = 10.0
_BUILD_KEY = pytest.StashKey["ToolsBuild | ToolsBuildError"]()
_START_KEY = pytest.StashKey[float]()

T = TypeVar("T")


class ToolsBuildError(RuntimeError):
    """hack/k8s-tools.sh could not provide the binaries: every Kubernetes test must fail."""


@dataclass(frozen=True)
class ToolsBuild:
    bin_dir: Path
    seconds: float


@dataclass(frozen=True)
class K8sCluster:
    """How tests reach the running control plane; everything is local to this test session."""

    kubeconfig: Path
    server: str
    bin_dir: Path
    work_dir: Path
    ca_cert: Path
    client_cert: Path
    client_key: Path
    version: str
    audit_log: Path | None = None  # requests of ServiceAccounts, one JSON event per line
    pod_cidr: ipaddress.IPv4Network = POD_CIDR
    service_cidr: ipaddress.IPv4Network = SERVICE_CIDR
    node_names: tuple[str, ...] = NODE_NAMES

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new client authenticated as cluster admin; close it (or use it in a `with`)."""
        configuration = kubernetes.client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca_cert)
        configuration.cert_file = str(self.client_cert)
        configuration.key_file = str(self.client_key)
        return kubernetes.client.ApiClient(configuration)

    def env(self) -> dict[str, str]:
        """The environment for subprocesses that should talk to this cluster (kubectl, helm, the
        operator): KUBECONFIG, the tools first on PATH, and helm's state kept in the work dir."""
        helm_home = self.work_dir / "helm"
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", args, input=input, check=check, timeout=timeout)

    def service_account_kubeconfig(
        self, account: str, namespace: str, path: Path, *, duration: str = "4h"
    ) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount (a TokenRequest), not as admin:
        for running a process with exactly that account's RBAC."""
        token = self.kubectl(
            "create", "token", account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_cert)},
                }
            ],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": account}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config))  # JSON is YAML: kubectl and kopf read it as such
        return path

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, input=input, check=check, timeout=timeout)

    def _run(
        self, tool: str, args: Sequence[str], *, input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin_dir / tool), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result


def wait_until(
    condition: Callable[[], T | None], *, timeout: float = 60.0, interval: float = 0.2, what: str
) -> T:
    """Polls until `condition` returns something other than None/False and returns it.

    Controllers converge asynchronously, so tests wait for the state they expect instead of
    sleeping; the timeout only bounds a failure, it is not a speed assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- building the tools -------------------------------------------------------------------------


def build_tools() -> ToolsBuild:
    """Runs hack/k8s-tools.sh, which returns at once when the cached binaries are complete."""
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(TOOLS_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ToolsBuildError(
            f"{TOOLS_SCRIPT} failed (exit {result.returncode}), so the Kubernetes tests cannot "
            "run; its log went to stderr."
        )
    bin_dir = Path(lines[-1])
    if not (bin_dir / "kube-apiserver").is_file():
        raise ToolsBuildError(f"{TOOLS_SCRIPT} printed {bin_dir}, which has no kube-apiserver")
    return ToolsBuild(bin_dir=bin_dir, seconds=time.monotonic() - started)


def _tools(config: pytest.Config) -> ToolsBuild:
    """The build made after collection, or a build now when the cluster was asked for in a way
    collection could not see. A failed build is raised again in every test that needs it."""
    build = config.stash.get(_BUILD_KEY, None)
    if build is None:
        try:
            build = build_tools()
        except ToolsBuildError as error:
            build = error
        config.stash[_BUILD_KEY] = build
    if isinstance(build, ToolsBuildError):
        raise build
    return build


def _needs_cluster(item: pytest.Item) -> bool:
    return "k8s_cluster" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_cluster(item):
            item.add_marker(pytest.mark.k8s)
            # Under pytest-xdist (`--dist loadgroup`) every test of the cluster runs on one
            # worker: one control plane per run, not one per worker (each costs ~1 GiB and a
            # core while it starts), and kwok's pod IPs (POD_CIDR) are fixed, so two planes'
            # pods would take the same loopback addresses.
            item.add_marker(pytest.mark.xdist_group("k8s"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Builds the tools once collection is done, so the (long, first-time-only) build is neither
    paid by runs that select no Kubernetes test nor counted against one test's timeout."""
    if session.config.option.collectonly or not any(map(_needs_cluster, session.items)):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    output = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    # A failure is stashed by _tools and raised again in each test that needs the cluster.
    with output, contextlib.suppress(ToolsBuildError):
        _tools(session.config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    build = config.stash.get(_BUILD_KEY, None)
    if build is None:
        return
    if isinstance(build, ToolsBuildError):
        terminalreporter.write_line(f"k8s tools: FAILED: {build}", red=True)
        return
    line = f"k8s tools: {build.bin_dir} (hack/k8s-tools.sh took {build.seconds:.1f}s)"
    started = config.stash.get(_START_KEY, None)
    if started is not None:
        line += f"; control plane started in {started:.1f}s"
    terminalreporter.write_line(line)


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    front_proxy_ca_cert: Path
    front_proxy_client_cert: Path
    front_proxy_client_key: Path
    service_account_key: Path
    service_account_pub: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _issue(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    is_ca: bool,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    usage = x509.KeyUsage(
        digital_signature=True, key_cert_sign=is_ca, crl_sign=is_ca, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    builder = builder.add_extension(usage, critical=True)
    if not is_ca:
        server_and_client = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(server_and_client), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """A throw-away CA, one serving certificate for every component on loopback, an admin client
    certificate in system:masters, the front-proxy (request-header) CA and client that API
    aggregation uses, and the service-account signing key pair. ECDSA keys, because they are
    generated in microseconds and every component accepts them."""
    directory.mkdir(parents=True, exist_ok=True)

    def name(common_name: str, organization: str | None = None) -> x509.Name:
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        return x509.Name(attributes)

    def save(
        stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("messaging-test-ca")
    ca = _issue(subject=ca_name, key=ca_key, issuer=ca_name, issuer_key=ca_key, is_ca=True)
    ca_cert, ca_key_path = save("ca", ca, ca_key)

    dns_names = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    ips = [ipaddress.IPv4Address("127.0.0.1"), SERVICE_CIDR[1]]
    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving = _issue(
        subject=name("kube-apiserver"),
        key=serving_key,
        issuer=ca_name,
        issuer_key=ca_key,
        is_ca=False,
        sans=[*(x509.DNSName(d) for d in dns_names), *(x509.IPAddress(ip) for ip in ips)],
    )
    serving_cert, serving_key_path = save("serving", serving, serving_key)

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _issue(
        subject=name("admin", "system:masters"),
        key=admin_key,
        issuer=ca_name,
        issuer_key=ca_key,
        is_ca=False,
    )
    admin_cert, admin_key_path = save("admin", admin, admin_key)

    # A CA of its own, as kubeadm does: a client certificate from the main CA must never be
    # able to pass itself off as the aggregation proxy.
    front_ca_key = ec.generate_private_key(ec.SECP256R1())
    front_ca_name = name("messaging-test-front-proxy-ca")
    front_ca = _issue(
        subject=front_ca_name, key=front_ca_key, issuer=front_ca_name, issuer_key=front_ca_key,
        is_ca=True,
    )  # fmt: skip
    front_ca_cert, _ = save("front-proxy-ca", front_ca, front_ca_key)
    front_key = ec.generate_private_key(ec.SECP256R1())
    front = _issue(
        subject=name("front-proxy-client"), key=front_key, issuer=front_ca_name,
        issuer_key=front_ca_key, is_ca=False,
    )  # fmt: skip
    front_cert, front_key_path = save("front-proxy-client", front, front_key)

    sa_key = ec.generate_private_key(ec.SECP256R1())
    sa_key_path, sa_pub_path = directory / "sa.key", directory / "sa.pub"
    _write_key(sa_key_path, sa_key)
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(
        ca_cert=ca_cert,
        ca_key=ca_key_path,
        serving_cert=serving_cert,
        serving_key=serving_key_path,
        admin_cert=admin_cert,
        admin_key=admin_key_path,
        front_proxy_ca_cert=front_ca_cert,
        front_proxy_client_cert=front_cert,
        front_proxy_client_key=front_key_path,
        service_account_key=sa_key_path,
        service_account_pub=sa_pub_path,
    )


def write_kubeconfig(path: Path, *, server: str, pki: Pki) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "messaging-test",
                "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate": str(pki.admin_cert),
                    "client-key": str(pki.admin_key),
                },
            }
        ],
        "contexts": [
            {
                "name": "messaging-test",
                "context": {"cluster": "messaging-test", "user": "admin", "namespace": "default"},
            }
        ],
        "current-context": "messaging-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# --- processes ----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: if pytest is killed outright (no finalizer, no atexit), the
    kernel still kills the component instead of leaving it bound to its ports."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the whole process group, then SIGKILL after a grace period."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_GRACE)


@dataclass
class ControlPlane:
    """Owns the component processes; `stop()` is safe to call any number of times."""

    log_dir: Path
    components: list[Component] = field(default_factory=list)

    def start(self, name: str, args: Sequence[str]) -> Component:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        component = Component(name=name, process=process, log_path=log_path)
        self.components.append(component)
        return component

    def check_alive(self) -> None:
        for component in self.components:
            code = component.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"{component.name} exited with {code}; last lines of {component.log_path}:\n"
                    f"{component.log_tail()}"
                )

    def stop(self) -> None:
        while self.components:
            self.components.pop().stop()


def _https_ok(port: int, path: str, context: ssl.SSLContext) -> Callable[[], bool]:
    """A probe: does GET https://127.0.0.1:PORT/PATH answer 200 right now?"""

    def probe() -> bool:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
        try:
            connection.request("GET", path)
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    return probe


def _wait_healthy(
    plane: ControlPlane, what: str, probe: Callable[[], bool], timeout: float = STARTUP_TIMEOUT
) -> None:
    def ready() -> bool:
        plane.check_alive()
        return probe()

    wait_until(ready, timeout=timeout, interval=0.1, what=what)


def _fake_node(name: str) -> kubernetes.client.V1Node:
    """A node for kwok to keep alive. kwok's node-initialize stage fills in conditions and
    addresses; capacity is ours to set, and podCIDR is where kwok takes pod IPs from."""
    capacity = {"cpu": "64", "memory": "256Gi", "pods": "250"}
    return kubernetes.client.V1Node(
        metadata=kubernetes.client.V1ObjectMeta(
            name=name,
            annotations={KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            labels={
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        ),
        spec=kubernetes.client.V1NodeSpec(pod_cidr=str(POD_CIDR), pod_cidrs=[str(POD_CIDR)]),
        status=kubernetes.client.V1NodeStatus(capacity=capacity, allocatable=capacity),
    )


def _node_ready(node: Any) -> bool:
    conditions = node.status.conditions or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    not_ready_taint = any(t.key.startswith("node.kubernetes.io/") for t in (node.spec.taints or []))
    return ready and not not_ready_taint


def start_control_plane(bin_dir: Path, work_dir: Path) -> tuple[K8sCluster, ControlPlane]:
    """Starts every component, waits until the cluster schedules and runs pods, and returns the
    handle plus the process owner the caller must stop."""
    pki = make_pki(work_dir / "pki")
    log_dir = work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("etcd", "controller-manager", "scheduler"):
        (work_dir / sub).mkdir(mode=0o700, exist_ok=True)
    etcd_port, etcd_peer_port, api_port, kcm_port, scheduler_port, kwok_port = free_ports(6)
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = work_dir / "kubeconfig"
    write_kubeconfig(kubeconfig, server=server, pki=pki)
    version_line = (bin_dir.parent / "BUILD-INFO").read_text().splitlines()[0]
    version = version_line.split()[1]

    audit_log = log_dir / "audit.log"
    audit_policy = work_dir / "audit-policy.yaml"
    # Only what ServiceAccounts do (the operator runs as one), at the Metadata level: enough to
    # count an operator's requests by verb and resource without slowing everything else.
    audit_policy.write_text(
        json.dumps(
            {
                "apiVersion": "audit.k8s.io/v1",
                "kind": "Policy",
                "omitStages": ["RequestReceived"],
                "rules": [
                    {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
                    {"level": "None"},
                ],
            }
        )
    )
    plane = ControlPlane(log_dir=log_dir)
    atexit.register(plane.stop)
    try:
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer_port}"
        plane.start(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={work_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                # Test data is thrown away; not waiting on fsync makes every write much faster.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        plane.start(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={work_dir / 'pki'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                # The `kubernetes` Service would point at 127.0.0.1, which the API refuses as an
                # endpoint address; nothing in the tests reaches the API through that Service.
                "--endpoint-reconciler-type=none",
                f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
                f"--proxy-client-key-file={pki.front_proxy_client_key}",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=200",
            ],
        )
        api_context = ssl.create_default_context(cafile=str(pki.ca_cert))
        api_context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        _wait_healthy(
            plane,
            "kube-apiserver /readyz",
            _https_ok(api_port, "/readyz", api_context),
        )

        common = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            "--leader-elect=false",
            "--profiling=false",
        ]
        plane.start(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                *common,
                f"--secure-port={kcm_port}",
                f"--cert-dir={work_dir / 'controller-manager'}",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--controllers=*",
                # Its default is a host directory it would create.
                f"--flex-volume-plugin-dir={work_dir / 'controller-manager' / 'flexvolume'}",
            ],
        )
        plane.start(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                *common,
                f"--secure-port={scheduler_port}",
                f"--cert-dir={work_dir / 'scheduler'}",
            ],
        )
        plane.start(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={kubeconfig}",
                f"--config={bin_dir.parent / 'share' / 'kwok' / 'stages.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{kwok_port}",
                "--node-lease-duration-seconds=40",
            ],
        )
        client_context = ssl.create_default_context(cafile=str(pki.ca_cert))
        for name, port in (
            ("kube-controller-manager", kcm_port),
            ("kube-scheduler", scheduler_port),
        ):
            _wait_healthy(plane, f"{name} /healthz", _https_ok(port, "/healthz", client_context))

        cluster = K8sCluster(
            kubeconfig=kubeconfig,
            server=server,
            bin_dir=bin_dir,
            work_dir=work_dir,
            ca_cert=pki.ca_cert,
            client_cert=pki.admin_cert,
            client_key=pki.admin_key,
            version=version,
            audit_log=audit_log,
        )
        with cluster.api_client() as api:
            core = kubernetes.client.CoreV1Api(api)
            for node_name in NODE_NAMES:
                core.create_node(_fake_node(node_name))

            def nodes_ready() -> bool:
                plane.check_alive()
                return all(_node_ready(core.read_node(n)) for n in NODE_NAMES)

            wait_until(nodes_ready, timeout=STARTUP_TIMEOUT, what=f"nodes {NODE_NAMES} Ready")
            _wait_for_service_account(core, "default")
    except BaseException:
        plane.stop()
        raise
    return cluster, plane


def _wait_for_service_account(core: Any, namespace: str) -> None:
    """Pods are refused until the namespace's `default` ServiceAccount exists, which the
    controller-manager creates shortly after the namespace."""

    def exists() -> bool:
        return bool(
            core.list_namespaced_service_account(
                namespace, field_selector="metadata.name=default"
            ).items
        )

    wait_until(exists, timeout=STARTUP_TIMEOUT, what=f"ServiceAccount {namespace}/default")


# --- fixtures -----------------------------------------------------------------------------------


def _announce(config: pytest.Config, line: str) -> None:
    """Writes to the terminal even while pytest captures the output of a fixture."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.ensure_newline()
        reporter.write_line(line)


@pytest.fixture(scope="session")
def k8s_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[K8sCluster]:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with one fake node,
    on loopback and free ports, for the whole session. Component logs are in work_dir/logs."""
    config = request.config
    build = _tools(config)
    work_dir = tmp_path_factory.mktemp("k8s-cluster")
    started = time.monotonic()
    cluster, plane = start_control_plane(build.bin_dir, work_dir)
    elapsed = time.monotonic() - started
    config.stash[_START_KEY] = elapsed
    _announce(
        config,
        f"k8s control plane {cluster.version} at {cluster.server} started in {elapsed:.1f}s "
        f"(logs: {work_dir / 'logs'})",
    )
    try:
        yield cluster
    finally:
        plane.stop()
        # The etcd data is the bulk of the directory and useless after the run; logs stay.
        shutil.rmtree(work_dir / "etcd", ignore_errors=True)


@pytest.fixture
def k8s_namespace(k8s_cluster: K8sCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own for one test, with its default ServiceAccount in place so pods
    can be created at once; deleted (without waiting) afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug or 'test'}-{secrets.token_hex(3)}"
    with k8s_cluster.api_client() as api:
        core = kubernetes.client.CoreV1Api(api)
        core.create_namespace(
            kubernetes.client.V1Namespace(
                metadata=kubernetes.client.V1ObjectMeta(
                    name=name, labels={"messaging.test/harness": "true"}
                )
            )
        )
        _wait_for_service_account(core, name)
    try:
        yield name
    finally:
        with k8s_cluster.api_client() as api:
            kubernetes.client.CoreV1Api(api).delete_namespace(name)
