"""Tracing's settings fail fast, and log lines written inside a span name it."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import ValidationError

from messaging.logs import JsonFormatter
from messaging.settings import Settings


@pytest.mark.parametrize(
    "endpoint",
    ["localhost:4317", "grpc://collector:4317", "http://collector", "http://collector:4317/v1",
     "http://:4317", "http://collector:port"],
)  # fmt: skip
def test_an_endpoint_that_is_not_an_otlp_grpc_address_is_refused(endpoint: str) -> None:
    with pytest.raises(ValidationError, match="otel_endpoint"):
        Settings(otel_endpoint=endpoint)


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_a_sample_ratio_outside_zero_to_one_is_refused(ratio: float) -> None:
    with pytest.raises(ValidationError, match="otel_sample_ratio"):
        Settings(otel_sample_ratio=ratio)


def test_tracing_is_off_by_default_and_an_endpoint_keeps_its_scheme() -> None:
    assert Settings().otel_endpoint == ""
    assert Settings(otel_endpoint="https://collector:4317/").otel_endpoint == (
        "https://collector:4317"
    )


def _line() -> dict[str, str]:
    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO", "name": "t"})
    parsed: dict[str, str] = json.loads(JsonFormatter().format(record))
    return parsed


def test_a_log_line_carries_the_ids_of_the_span_it_was_written_in_and_none_outside() -> None:
    tracer = TracerProvider().get_tracer("test")
    assert "trace_id" not in _line()
    with tracer.start_as_current_span("work") as span:
        line = _line()
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in _line()
