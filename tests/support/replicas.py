"""Several real service processes (`messaging serve`) sharing PostgreSQL and Redis.

Each replica is a subprocess on its own loopback ports with its own log file; tests can stop it
gracefully (SIGTERM), kill it (SIGKILL) or read its metrics. The Connections stand-in runs in the
test's event loop and the replicas reach it over real gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from messaging.auth import mint_token
from messaging.db import migrate
from messaging.dev_connections import ConnectionGraph, start_connections_server
from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.settings import Settings
from tests.support import launch
from tests.support.servers import PostgresServer, RedisControl, free_ports
from tests.support.service import JWT_SECRET, Device


@dataclass
class Replica:
    name: str
    env: dict[str, str]
    log_path: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """The metrics port: /metrics lives only here (and the probes again)."""
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self) -> None:
        self.process = launch.spawn_replica(self.name, self.log_path.parent, self.env).popen

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0) as http:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.log()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.url}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log()}")

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with httpx.AsyncClient(timeout=2.0) as http:
            reply = await http.get(f"{self.url}/readyz")
            return reply.status_code, reply.json()

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed like ``name{label="v"}`` (labels sorted)."""
        async with httpx.AsyncClient(timeout=2.0) as http:
            text = (await http.get(f"{self.metrics_url}/metrics")).text
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    async def metric(self, key: str) -> float:
        return (await self.metrics()).get(key, 0.0)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout}s")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@dataclass
class Cluster:
    """Replicas of one deployment: same database, same Redis, same secret."""

    database_url: str
    redis: RedisControl | None
    connections_address: str
    graph: ConnectionGraph
    workdir: Path
    replicas: list[Replica] = field(default_factory=list)
    connections_server: grpc.aio.Server | None = None

    async def stop_connections(self) -> None:
        """Take the Connections service down (its address refuses connections)."""
        if self.connections_server is not None:
            await self.connections_server.stop(0)
            self.connections_server = None

    async def start_connections(self) -> None:
        """Bring the Connections service back on the same address."""
        if self.connections_server is None:
            port = int(self.connections_address.rsplit(":", 1)[1])
            self.connections_server, _ = await start_connections_server(self.graph, port=port)

    def token(self, user: str) -> str:
        return mint_token(Settings(jwt_secret=JWT_SECRET), user)

    def add(self, **settings: str) -> Replica:
        name = f"replica-{len(self.replicas)}-{uuid.uuid4().hex[:4]}"
        http_port, grpc_port, metrics_port = free_ports(3)
        env = dict(os.environ)
        env.update(
            {
                "MESSAGING_MODE": "production",
                "MESSAGING_DATABASE_URL": self.database_url,
                "MESSAGING_JWT_SECRET": JWT_SECRET,
                "MESSAGING_CONNECTIONS_ADDRESS": self.connections_address,
                "MESSAGING_CONNECTIONS_CACHE_TTL_SECONDS": "0",
                # The stand-in answers from this test's event loop, which may be busy.
                "MESSAGING_CONNECTIONS_TIMEOUT_SECONDS": "2",
                "MESSAGING_REDIS_HEARTBEAT_SECONDS": "0.5",
                "MESSAGING_REDIS_REPLICA_TTL_SECONDS": "2",
                "MESSAGING_DRAIN_WINDOW_SECONDS": "1",
                "MESSAGING_SHUTDOWN_DEADLINE_SECONDS": "8",
                "MESSAGING_LOG_LEVEL": "INFO",
                "MESSAGING_LOG_FORMAT": "json",
            }
        )
        if self.redis is not None:
            env["MESSAGING_REDIS_URL"] = self.redis.url
        # Runs the replicas from another source tree (the test process keeps this one), e.g. to
        # measure a previous release under the same tests.
        if other_source := os.environ.get("MESSAGING_TEST_REPLICA_SOURCE"):
            env["PYTHONPATH"] = other_source
        env.update(launch.replica_env(name, http_port, grpc_port, metrics_port))
        env.update(launch.settings_env(settings))
        replica = Replica(
            name, env, self.workdir / f"{name}.log", http_port, grpc_port, metrics_port
        )
        self.replicas.append(replica)
        return replica

    async def start(self, count: int, **settings: str) -> list[Replica]:
        started = [self.add(**settings) for _ in range(count)]
        for replica in started:
            replica.start()
        await asyncio.gather(*(r.wait_ready() for r in started))
        return started

    def stop(self) -> None:
        for replica in self.replicas:  # all at once: each drains in parallel
            if replica.process is not None and replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            replica.stop()


@pytest.fixture(scope="session")
def cluster_database(postgres_server: PostgresServer) -> str:
    url = postgres_server.create_database(f"cluster_{uuid.uuid4().hex[:8]}")
    migrate(Settings(database_url=url, jwt_secret=JWT_SECRET))
    return url.replace("postgresql+asyncpg://", "postgresql://")


ClusterT = TypeVar("ClusterT", bound=Cluster)


@contextlib.asynccontextmanager
async def deployment(
    database_url: str,
    redis: RedisControl | None,
    *,
    prefix: str = "messaging-cluster-",
    kind: type[ClusterT] = Cluster,  # type: ignore[assignment]
    **fields: Any,
) -> AsyncIterator[ClusterT]:
    """A ``kind`` of deployment with no replicas yet and its Connections stand-in (in this event
    loop, everyone connected); its replicas and the stand-in are stopped when the block ends."""
    graph = ConnectionGraph(all_connected=True)
    server, port = await start_connections_server(graph)
    built = kind(
        database_url=database_url,
        redis=redis,
        connections_address=f"127.0.0.1:{port}",
        graph=graph,
        workdir=Path(tempfile.mkdtemp(prefix=prefix)),
        connections_server=server,
        **fields,
    )
    try:
        yield built
    finally:
        built.stop()
        await built.stop_connections()


@pytest_asyncio.fixture
async def cluster(cluster_database: str, redis_server: RedisControl) -> AsyncIterator[Cluster]:
    """A deployment with no replicas yet: tests start as many as they need."""
    redis_server.start()
    redis_server.cli("FLUSHALL")
    try:
        async with deployment(cluster_database, redis_server, kind=Cluster) as built:
            yield built
    finally:
        redis_server.start()


@contextlib.contextmanager
def logs_on_failure(cluster: Cluster) -> Iterator[None]:
    """Print every replica's log tail when the block fails, to see what the processes saw."""
    try:
        yield
    except BaseException:
        for replica in cluster.replicas:
            print(f"----- {replica.name} -----\n{replica.log()}")
        raise


@contextlib.asynccontextmanager
async def devices_on(cluster: Cluster, *placed: tuple[str, Replica]) -> AsyncIterator[list[Device]]:
    """Connect each user's device to the replica named beside it; disconnect them all after."""
    connected = [Device(replica.url, cluster.token(user)) for user, replica in placed]
    try:
        await asyncio.gather(*(d.connect() for d in connected))
        yield connected
    finally:
        await asyncio.gather(*(d.disconnect() for d in connected), return_exceptions=True)


async def grpc_status(
    target: str, token: str, credentials: grpc.ChannelCredentials | None = None
) -> grpc.StatusCode:
    """The status code ``ListConversations`` gets with ``token``: the cheapest call that
    authenticates, so it tells whether a token (or a channel's TLS) is let in."""
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        call = channel.unary_unary(
            "/messaging.v1.MessagingService/ListConversations",
            request_serializer=pb.ListConversationsRequest.SerializeToString,
            response_deserializer=pb.ListConversationsResponse.FromString,
        )
        try:
            await call(
                pb.ListConversationsRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK
