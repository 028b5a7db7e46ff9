"""A real Redis Cluster for tests: three masters and three replicas of Debian's ``redis-server``.

Each node runs cluster-enabled on private loopback ports (its client port and its cluster-bus
port both picked free, so nothing depends on ``port + 10000`` being free), in its own temporary
directory; ``redis-cli --cluster create ... --cluster-replicas 1`` joins them, and the fixture
waits until every node says ``cluster_state:ok``. The node timeout is short (2 s) so that a killed
master is replaced within seconds. Tests may kill and restart nodes and fail over shards; the
fixture stops every node at the end of the session. ``replicas_on_redis_cluster`` is the
deployment of ``tests.support.replicas`` (real ``messaging serve`` processes) with
``MESSAGING_REDIS_CLUSTER=true`` and this cluster's URL.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.replicas import Cluster, Replica, deployment
from tests.support.servers import free_port, wait_for_port

NODE_TIMEOUT_MS = 2000


@dataclass
class ClusterNode:
    port: int
    bus_port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run hack/test.sh (installs it)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--cluster-port", str(self.bus_port),
             "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(self.workdir / "nodes.conf"),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log")],
            start_new_session=True,
        )  # fmt: skip
        wait_for_port("127.0.0.1", self.port)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node vanishes without telling anyone (a crashed master)."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            check=True, capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip


@dataclass
class RedisClusterControl:
    """The cluster's six nodes, and the operations the fault tests need."""

    root: Path
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """One node's address: the service finds the others from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def roles(self) -> dict[int, str]:
        """Port -> ``master`` or ``slave``, as a running node sees the cluster (failed ones out)."""
        seen = next(n for n in self.nodes if n.running)
        roles = {}
        for line in seen.cli("CLUSTER", "NODES").splitlines():
            _, address, flags, *_ = line.split()
            if "fail" in flags.split(","):
                continue
            port = int(address.split("@")[0].rsplit(":", 1)[1])
            roles[port] = "master" if "master" in flags else "slave"
        return roles

    def masters(self) -> list[ClusterNode]:
        return [self.node(p) for p, role in sorted(self.roles().items()) if role == "master"]

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        """The replica of ``master`` (as ``master`` itself reports it)."""
        for line in master.cli("INFO", "replication").splitlines():
            if line.startswith("slave0:"):
                fields = dict(part.split("=", 1) for part in line.split(":", 1)[1].split(","))
                return self.node(int(fields["port"]))
        raise AssertionError(f"node {master.port} has no replica")

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Every running node says the cluster is ok and they agree who the masters are."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            with contextlib.suppress(subprocess.SubprocessError):
                states = [n.cli("CLUSTER", "INFO") for n in self.nodes if n.running]
            if states and all("cluster_state:ok" in s for s in states):
                with contextlib.suppress(subprocess.SubprocessError, StopIteration):
                    views = {
                        tuple(sorted(self._masters_seen_by(n))) for n in self.nodes if n.running
                    }
                    if len(views) == 1 and len(next(iter(views))) == 3:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster is not ok after {timeout}s: {states}")
            time.sleep(0.1)

    def _masters_seen_by(self, node: ClusterNode) -> list[int]:
        masters = []
        for line in node.cli("CLUSTER", "NODES").splitlines():
            _, address, flags, *rest = line.split()
            if "master" in flags and "fail" not in flags and len(rest) > 5:
                masters.append(int(address.split("@")[0].rsplit(":", 1)[1]))
        return masters

    def flush(self) -> None:
        for master in self.masters():
            master.cli("FLUSHALL")

    def restore(self) -> None:
        """Start the nodes tests killed (they rejoin as replicas); wait for a healthy cluster."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_ok()
        # Wait for every master to have its replica back, so the next failover has one.
        deadline = time.monotonic() + 60
        while any(not self._has_replica(m) for m in self.masters()):
            if time.monotonic() > deadline:
                raise TimeoutError("a master of the Redis Cluster has no replica back")
            time.sleep(0.2)

    @staticmethod
    def _has_replica(master: ClusterNode) -> bool:
        info = master.cli("INFO", "replication")
        return "connected_slaves:1" in info and "state=online" in info

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_redis_cluster(root: Path) -> RedisClusterControl:
    control = RedisClusterControl(root)
    ports: set[int] = set()
    for index in range(6):
        port = bus = 0
        while port in ports or port == 0:
            port = free_port()
        ports.add(port)
        while bus in ports or bus == 0:
            bus = free_port()
        ports.add(bus)
        workdir = root / f"node-{index}"
        workdir.mkdir()
        control.nodes.append(ClusterNode(port, bus, workdir))
    try:
        for node in control.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in control.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        control.wait_ok()
    except BaseException:
        control.stop()
        raise
    return control


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterControl]:
    root = Path(tempfile.mkdtemp(prefix="messaging-redis-cluster-"))
    control = start_redis_cluster(root)
    atexit.register(control.stop)
    try:
        yield control
    finally:
        control.stop()
        atexit.unregister(control.stop)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class ClusterDeployment(Cluster):
    """Replicas whose Redis is the Redis Cluster (every replica gets its URL and the switch)."""

    redis_cluster: RedisClusterControl | None = None

    def add(self, **settings: str) -> Replica:
        assert self.redis_cluster is not None
        settings = {"redis_url": self.redis_cluster.url, "redis_cluster": "true", **settings}
        return super().add(**settings)


@pytest_asyncio.fixture
async def replicas_on_redis_cluster(
    cluster_database: str, redis_cluster: RedisClusterControl
) -> AsyncIterator[ClusterDeployment]:
    """A deployment on the Redis Cluster with no replicas yet; the cluster is whole again after."""
    redis_cluster.restore()
    redis_cluster.flush()
    try:
        async with deployment(
            cluster_database,
            None,
            prefix="messaging-on-redis-cluster-",
            kind=ClusterDeployment,
            redis_cluster=redis_cluster,
        ) as built:
            yield built
    finally:
        redis_cluster.restore()
