"""OpenTelemetry tracing: a real replica exports its spans over OTLP to a receiver the test runs.

The receiver is a grpc server implementing the collector's ``TraceService/Export`` (the
``opentelemetry-proto`` messages), the replica is a ``messaging serve`` process, the clients are
a python-socketio device and a gRPC caller that sends its own ``traceparent``. The Connections
stand-in here records the metadata it is called with, to see the context travel on.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest_asyncio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from messaging.proto.connections.v1 import connections_pb2, connections_pb2_grpc
from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from tests.support.replicas import Cluster, devices_on, logs_on_failure
from tests.support.service import unique

HASH_SECRET = "tracing-test-user-hash-secret"
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_PARENT = "00f067aa0ba902b7"
SOCKET_SEND = "socket.io/sendMessage"
GRPC_SEND = "messaging.v1.MessagingService/SendMessage"
IS_CONNECTED = "connections.v1.ConnectionsService/IsConnected"
BATCH = "messaging.group_commit"
FANOUT = "messaging.fanout"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """What an OpenTelemetry collector's OTLP/gRPC receiver does, keeping the spans."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.resources: list[dict[str, Any]] = []
        self.exports = 0

    async def Export(  # noqa: N802 - the service's method name
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.exports += 1
        for resource_spans in request.resource_spans:
            self.resources.append(_attributes(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[trace_pb2.Span]:
        return [span for span in self.spans if span.name == name]


class Connections(connections_pb2_grpc.ConnectionsServiceServicer):
    """Everyone is connected; the metadata of every call is kept."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    async def IsConnected(  # noqa: N802 - the service's method name
        self,
        request: connections_pb2.IsConnectedRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> connections_pb2.IsConnectedResponse:
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        return connections_pb2.IsConnectedResponse(connected=True)


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        found[pair.key] = getattr(pair.value, kind) if kind else None
    return found


def _hex(raw: bytes) -> str:
    return raw.hex()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    spans = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(spans, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield spans, port
    finally:
        await server.stop(0)


@pytest_asyncio.fixture
async def connections(cluster: Cluster) -> AsyncIterator[Connections]:
    """Replaces the cluster's Connections stand-in (same address) with the recording one."""
    await cluster.stop_connections()
    server = grpc.aio.server()
    recorder = Connections()
    connections_pb2_grpc.add_ConnectionsServiceServicer_to_server(recorder, server)
    server.add_insecure_port(cluster.connections_address)
    await server.start()
    try:
        yield recorder
    finally:
        await server.stop(0)


async def _until(receiver: Receiver, *names: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not all(receiver.named(name) for name in names):
        assert time.monotonic() < deadline, (
            f"spans {names} not all exported; got {sorted({s.name for s in receiver.spans})}"
        )
        await asyncio.sleep(0.1)


def _user_hash(user_id: str) -> str:
    return hmac.new(HASH_SECRET.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:16]


async def test_the_send_path_and_grpc_calls_arrive_as_linked_spans_without_personal_data(
    cluster: Cluster, receiver: tuple[Receiver, int], connections: Connections
) -> None:
    spans, port = receiver
    replica = cluster.add(
        otel_endpoint=f"http://127.0.0.1:{port}",
        otel_service_name="messaging-under-test",
        log_user_hash_secret=HASH_SECRET,
    )
    replica.env["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # the SDK's batch delay: export soon
    replica.start()
    await replica.wait_ready()
    alice, bob = unique("alice"), unique("bob")
    secret = f"content-{unique('secret')}"
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, replica), (bob, replica)) as (a, _):
            conversation = (await a.ok("createConversation", {"participantId": bob}))["id"]
            sent = await a.ok("sendMessage", {"conversationId": conversation, "content": secret})
            async with grpc.aio.insecure_channel(replica.grpc_target) as channel:
                stub = pb_grpc.MessagingServiceStub(channel)
                reply = await stub.SendMessage(
                    pb.SendMessageRequest(conversation_id=conversation, content=secret),
                    metadata=(
                        ("authorization", f"Bearer {cluster.token(alice)}"),
                        ("traceparent", f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"),
                    ),
                    timeout=10,
                )
            await _until(spans, SOCKET_SEND, GRPC_SEND, BATCH, FANOUT, IS_CONNECTED)
            # Let the second batch (and the gRPC side's fan-out) arrive too.
            deadline = time.monotonic() + 30
            while len(spans.named(BATCH)) < 2 or len(spans.named(FANOUT)) < 2:
                assert time.monotonic() < deadline, [s.name for s in spans.spans]
                await asyncio.sleep(0.1)

        assert {"service.name": "messaging-under-test"}.items() <= spans.resources[0].items()
        by_id = {(_hex(s.trace_id), _hex(s.span_id)): s for s in spans.spans}

        def children(parent: trace_pb2.Span) -> set[str]:
            return {
                s.name
                for s in spans.spans
                if s.trace_id == parent.trace_id and s.parent_span_id == parent.span_id
            }

        # The socket event: a server span, the user hashed, its steps as children.
        [socket_send] = spans.named(SOCKET_SEND)
        assert socket_send.kind == trace_pb2.Span.SPAN_KIND_SERVER
        attributes = _attributes(socket_send.attributes)
        assert attributes["messaging.user"] == _user_hash(alice)
        assert attributes["messaging.event"] == "sendMessage"
        assert {IS_CONNECTED, FANOUT} <= children(socket_send)

        # The gRPC call continues the caller's trace, under the caller's span.
        [grpc_send] = spans.named(GRPC_SEND)
        assert grpc_send.kind == trace_pb2.Span.SPAN_KIND_SERVER
        assert _hex(grpc_send.trace_id) == INCOMING_TRACE
        assert _hex(grpc_send.parent_span_id) == INCOMING_PARENT
        grpc_attributes = _attributes(grpc_send.attributes)
        assert grpc_attributes["rpc.method"] == "SendMessage"
        assert grpc_attributes["rpc.grpc.status_code"] == 0
        assert grpc_attributes["messaging.user"] == _user_hash(alice)
        assert {IS_CONNECTED, FANOUT} <= children(grpc_send)

        # The outbound call is a client span whose context reached the Connections service.
        for client in spans.named(IS_CONNECTED):
            assert client.kind == trace_pb2.Span.SPAN_KIND_CLIENT
        # (version-trace-span-flags; the flags are "sampled", plus "random id" for our own.)
        sent_parents = {m.get("traceparent", "")[:-3] for m in connections.metadata}
        for client in spans.named(IS_CONNECTED):
            assert f"00-{_hex(client.trace_id)}-{_hex(client.span_id)}" in sent_parents

        # Each batch is a trace of its own, linked to the sender(s) it committed for.
        linked = set()
        for batch in spans.named(BATCH):
            assert batch.parent_span_id == b""
            assert _attributes(batch.attributes)["messaging.batch.size"] >= 1
            linked |= {(_hex(link.trace_id), _hex(link.span_id)) for link in batch.links}
        assert (_hex(socket_send.trace_id), _hex(socket_send.span_id)) in linked
        assert (INCOMING_TRACE, _hex(grpc_send.span_id)) in linked
        assert all(key in by_id for key in linked)

        # Nothing anyone wrote or is named by: no raw user id, content or message id anywhere.
        exported = b"".join(s.SerializeToString() for s in spans.spans)
        for private in (alice, bob, secret, sent["id"], reply.message.id):
            assert private.encode() not in exported, private


async def test_log_lines_written_inside_a_span_carry_its_trace_id(
    cluster: Cluster, receiver: tuple[Receiver, int]
) -> None:
    spans, port = receiver
    replica = cluster.add(otel_endpoint=f"http://127.0.0.1:{port}")
    replica.env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    replica.start()
    await replica.wait_ready()
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, replica), (bob, replica)) as (a, _):
            conversation = (await a.ok("createConversation", {"participantId": bob}))["id"]
            # With the Connections service down the check fails closed and logs a warning,
            # inside the sendMessage span.
            await cluster.stop_connections()
            reply = await a.call("sendMessage", {"conversationId": conversation, "content": "x"})
            assert reply["ok"] is False
            assert reply["error"]["code"] == "UNAVAILABLE"
            await _until(spans, SOCKET_SEND, IS_CONNECTED)
        [failed] = spans.named(SOCKET_SEND)
        assert failed.status.code == trace_pb2.Status.STATUS_CODE_ERROR
        lines = [json.loads(line) for line in replica.log().splitlines() if line.startswith("{")]
        [warning] = [line for line in lines if line["msg"] == "connections check failed closed"]
        assert warning["trace_id"] == _hex(failed.trace_id)
        assert warning["span_id"] == _hex(failed.span_id)  # logged once the call had failed
        untraced = [line for line in lines if line["msg"] == "socket connected"]
        assert untraced
        assert all("trace_id" not in line for line in untraced)


async def test_with_tracing_off_nothing_is_exported_even_with_the_sdks_own_variables_set(
    cluster: Cluster, receiver: tuple[Receiver, int]
) -> None:
    spans, port = receiver
    replica = cluster.add()
    # The SDK's own configuration must not turn it on: only MESSAGING_OTEL_ENDPOINT does.
    replica.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    replica.env["OTEL_TRACES_EXPORTER"] = "otlp"
    replica.env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    replica.start()
    await replica.wait_ready()
    alice, bob = unique("alice"), unique("bob")
    async with devices_on(cluster, (alice, replica), (bob, replica)) as (a, _):
        conversation = (await a.ok("createConversation", {"participantId": bob}))["id"]
        await a.ok("sendMessage", {"conversationId": conversation, "content": "hi"})
    replica.stop()  # a tracing replica exports what it buffered when it stops
    assert spans.exports == 0
    log = replica.log()
    assert "tracing to" not in log
    assert '"trace_id"' not in log


def test_with_tracing_off_the_sdk_is_never_loaded_and_spans_are_one_shared_no_op() -> None:
    probe = """
import sys
from messaging import tracing
from messaging.app import build_service
from messaging.settings import Settings
settings = Settings(jwt_secret="x" * 32)
build_service(settings)
tracing.start(settings)
assert not tracing.enabled()
assert tracing.span("a") is tracing.span("b", fields={"user": "u"})
assert tracing.inject() == () and tracing.current() is None
import threading
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace",
             "opentelemetry.exporter"))), sorted(t.name for t in threading.enumerate()))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    # (redis-py imports the SDK's metrics module when it is installed; the tracer and the
    # exporter stay unloaded, and no exporter thread runs.)
    assert done.stdout.strip() == "[] ['MainThread']", done.stdout


async def test_a_zero_ratio_records_no_new_trace_but_follows_a_callers_sampled_one(
    cluster: Cluster, receiver: tuple[Receiver, int]
) -> None:
    spans, port = receiver
    replica = cluster.add(otel_endpoint=f"http://127.0.0.1:{port}", otel_sample_ratio="0")
    replica.env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    replica.start()
    await replica.wait_ready()
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, replica), (bob, replica)) as (a, _):
            conversation = (await a.ok("createConversation", {"participantId": bob}))["id"]
            await a.ok("sendMessage", {"conversationId": conversation, "content": "hi"})
            async with grpc.aio.insecure_channel(replica.grpc_target) as channel:
                stub = pb_grpc.MessagingServiceStub(channel)
                await stub.SendMessage(
                    pb.SendMessageRequest(conversation_id=conversation, content="hi"),
                    metadata=(
                        ("authorization", f"Bearer {cluster.token(alice)}"),
                        ("traceparent", f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"),
                    ),
                    timeout=10,
                )
            await _until(spans, GRPC_SEND, FANOUT, IS_CONNECTED)
    replica.stop()  # flushes whatever else was buffered
    assert {_hex(s.trace_id) for s in spans.spans} == {INCOMING_TRACE}
    assert not spans.named(SOCKET_SEND)
    assert not spans.named(BATCH)  # batches start traces of their own: the ratio leaves them out
