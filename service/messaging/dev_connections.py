"""A stand-in for the Connections service (owned by another team), for development and tests.

It serves the real ``connections.v1.ConnectionsService`` over gRPC from a list of user pairs, so
the messaging service talks to it exactly as it talks to the real one. Tests reach into the
running graph to add pairs, slow it down or make it fail.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from messaging.proto.connections.v1 import connections_pb2, connections_pb2_grpc

DEMO_USERS = ("alice", "bob", "carol", "dave")
DEMO_PAIRS = (("alice", "bob"), ("alice", "carol"), ("bob", "carol"), ("carol", "dave"))


@dataclass
class ConnectionGraph:
    """Who is connected to whom; mutable at run time so tests can change the answers."""

    pairs: set[frozenset[str]] = field(default_factory=set)
    all_connected: bool = False
    delay_seconds: float = 0.0
    fail_with: grpc.StatusCode | None = None
    calls: int = 0
    # Calls being answered right now, and the most there were at once (tests of batched checks).
    in_flight: int = 0
    most_in_flight: int = 0

    def connect(self, a: str, b: str) -> None:
        self.pairs.add(frozenset((a, b)))

    def disconnect(self, a: str, b: str) -> None:
        self.pairs.discard(frozenset((a, b)))

    def is_connected(self, a: str, b: str) -> bool:
        if a == b:
            return False
        return self.all_connected or frozenset((a, b)) in self.pairs

    @classmethod
    def demo(cls) -> ConnectionGraph:
        graph = cls()
        for a, b in DEMO_PAIRS:
            graph.connect(a, b)
        return graph

    @classmethod
    def from_file(cls, path: Path) -> ConnectionGraph:
        """Load ``{connections: [[a, b], ...]}`` or ``{allConnected: true}`` from YAML."""
        data: Any = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping with a 'connections' list")
        graph = cls(all_connected=bool(data.get("allConnected", False)))
        for pair in data.get("connections", []):
            if not (
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(u, str) for u in pair)
            ):
                raise ValueError(
                    f"{path}: each connection must be a pair of user ids, got {pair!r}"
                )
            graph.connect(pair[0], pair[1])
        return graph


class _Servicer(connections_pb2_grpc.ConnectionsServiceServicer):
    def __init__(self, graph: ConnectionGraph) -> None:
        self._graph = graph

    async def IsConnected(
        self,
        request: connections_pb2.IsConnectedRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> connections_pb2.IsConnectedResponse:
        self._graph.calls += 1
        self._graph.in_flight += 1
        self._graph.most_in_flight = max(self._graph.most_in_flight, self._graph.in_flight)
        try:
            if self._graph.delay_seconds:
                await asyncio.sleep(self._graph.delay_seconds)
        finally:
            self._graph.in_flight -= 1
        if self._graph.fail_with is not None:
            await context.abort(self._graph.fail_with, "injected failure")
        connected = self._graph.is_connected(request.user_id, request.other_user_id)
        return connections_pb2.IsConnectedResponse(connected=connected)


async def start_connections_server(
    graph: ConnectionGraph,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start serving ``graph`` (over TLS with ``credentials``); returns the server and its port."""
    server = grpc.aio.server()
    connections_pb2_grpc.add_ConnectionsServiceServicer_to_server(_Servicer(graph), server)
    if credentials is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    await server.start()
    return server, bound
