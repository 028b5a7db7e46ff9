"""gRPC server reflection answers under v1 and v1alpha, asked by grpc's own reflection client."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from messaging.grpc_reflection import V1_METHOD, V1_SERVICE_NAME
from tests.support.service import RunningService


def _v1_database(channel: grpc.Channel) -> ProtoReflectionDescriptorDatabase:
    """grpc's reflection client, speaking ``grpc.reflection.v1`` (the same messages on the wire)."""
    database = ProtoReflectionDescriptorDatabase(channel)
    database._stub = SimpleNamespace(
        ServerReflectionInfo=channel.stream_stream(
            V1_METHOD,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
    )
    return database


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_v1_and_v1alpha_list_and_describe_the_messaging_service(
    svc: RunningService, version: str
) -> None:
    def ask() -> tuple[set[str], set[str], str]:
        with grpc.insecure_channel(svc.grpc_target) as channel:
            database = (
                _v1_database(channel)
                if version == "v1"
                else ProtoReflectionDescriptorDatabase(channel)
            )
            services = set(database.get_services())
            described = database.FindFileContainingSymbol("messaging.v1.MessagingService")
            reflection_file = database.FindFileContainingSymbol(V1_SERVICE_NAME)
            return services, {m.name for m in described.service[0].method}, reflection_file.name

    services, methods, reflection_file = await asyncio.to_thread(ask)
    assert {
        "messaging.v1.MessagingService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert {"GetMessageHistory", "ListConversations", "CreateConversation"} <= methods
    assert reflection_file == "grpc/reflection/v1/reflection.proto"
