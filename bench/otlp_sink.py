"""An OTLP/gRPC trace receiver that only counts: the far end of a tracing replica in benchmarks.

    .venv/bin/python -m bench.otlp_sink --port 4317

Answers ``TraceService/Export`` like a collector would and prints the spans received so far
every ``--every`` seconds, so a benchmark of tracing on measures the exporter's real work (an
endpoint that refuses connections would have it back off instead).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    async def Export(  # noqa: N802 - the service's method name
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(port: int, every: float) -> None:
    server = grpc.aio.server()
    sink = Sink()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    while True:
        await asyncio.sleep(every)
        print(f"spans received: {sink.spans}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4317)
    parser.add_argument("--every", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.every))


if __name__ == "__main__":
    main()
