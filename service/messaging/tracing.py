"""Optional OpenTelemetry tracing of the send path and gRPC, exported over OTLP/gRPC.

Off unless ``MESSAGING_OTEL_ENDPOINT`` is set: then ``start`` builds an SDK tracer provider with a
batching OTLP exporter (its own thread) and the spans below are recorded; otherwise ``span``
returns a shared no-op context manager and nothing else happens (no SDK import, no thread, no
channel). The provider is this module's, not OpenTelemetry's global one: nothing else in the
process (libraries, tests running services side by side) records into it by surprise.

The spans (docs/observability.md):

- ``sendMessage`` (socket event, SERVER) and ``messaging.v1.MessagingService/<Method>`` (gRPC,
  SERVER, continuing the caller's ``traceparent`` metadata);
- ``messaging.group_commit`` (one per batch, linked to the span of every sender in it);
- ``messaging.fanout`` (the delivery of the committed message's events);
- ``connections.v1.ConnectionsService/IsConnected`` (CLIENT; its ``traceparent`` goes with it).

Attributes never carry what users wrote or who they are: users appear as the logs' keyed hash
(``logs.user_hash``), messages and conversations not at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from messaging.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_NOTHING = contextlib.nullcontext()
_state: dict[str, Any] = {"tracer": None, "provider": None, "ratio": 1.0}
_UNSAMPLED: contextvars.ContextVar[bool] = contextvars.ContextVar("unsampled", default=False)

# A parent for spans that start a trace of their own (a group commit serves many senders).
ROOT = otel_context.Context()
SERVER = SpanKind.SERVER
CLIENT = SpanKind.CLIENT
INTERNAL = SpanKind.INTERNAL


def enabled() -> bool:
    return _state["tracer"] is not None


def start(settings: Settings) -> None:
    """Build the provider and its exporter when an endpoint is configured (else nothing)."""
    if not settings.otel_endpoint or enabled():
        return
    # Imported here: a process with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased  # noqa: PLC0415

    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": settings.otel_service_name,
                "service.instance.id": settings.replica_id,
            }
        ),
        # New traces are sampled in ``span`` (before any SDK work); children follow parents.
        sampler=ParentBased(ALWAYS_ON),
    )
    endpoint = settings.otel_endpoint
    exporter = OTLPSpanExporter(
        endpoint=endpoint.split("://", 1)[1], insecure=endpoint.startswith("http://")
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _state["provider"] = provider
    _state["ratio"] = settings.otel_sample_ratio
    _state["tracer"] = provider.get_tracer("messaging")
    log.info(
        "tracing to %s",
        endpoint,
        extra={"sample_ratio": settings.otel_sample_ratio},
    )


def stop() -> None:
    """Export what is buffered and stop the exporter (the process is shutting down)."""
    provider: TracerProvider | None = _state["provider"]
    _state["tracer"] = _state["provider"] = None
    if provider is not None:
        provider.shutdown()


def span(
    name: str,
    *,
    kind: SpanKind = INTERNAL,
    attributes: Mapping[str, str | int | bool] | None = None,
    fields: Mapping[str, str] | None = None,
    links: Iterable[SpanContext | None] = (),
    parent: otel_context.Context | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """A span around the block, current inside it (and in the tasks it creates); no-op when off.

    ``fields`` are a request's log fields (``logs.log_context``: request id, socket id, event,
    hashed user), recorded as ``messaging.<field>``; a dict is handed over as it is, so a caller
    with tracing off pays nothing to build attributes. An exception escaping the block is
    recorded on the span (its type only: messages of database errors quote SQL and values) and
    marks it as an error.
    """
    tracer = _state["tracer"]
    if tracer is None:
        return _NOTHING
    if parent is None:
        if _UNSAMPLED.get():
            return _NOTHING  # inside a trace that was not sampled
        here = trace.get_current_span().get_span_context()
        if not here.is_valid and random.random() >= _state["ratio"]:  # noqa: S311 - not crypto
            return _Unsampled()
    elif parent is ROOT and random.random() >= _state["ratio"]:  # noqa: S311 - not crypto
        return _NOTHING
    recorded = dict(attributes or {})
    if fields:
        recorded.update((f"messaging.{key}", value) for key, value in fields.items())
    return _recorded(tracer, name, kind=kind, attributes=recorded, links=links, parent=parent)


class _Unsampled:
    """A new trace the ratio left out: its would-be children record nothing either.

    Decided here rather than by the SDK's sampler, because the SDK's unsampled span still costs
    about 20 µs of CPU (ids, sampler, context), where this costs a context variable.
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _UNSAMPLED.set(True)

    def __exit__(self, *exc: object) -> None:
        _UNSAMPLED.reset(self._token)


@contextlib.contextmanager
def _recorded(
    tracer: trace.Tracer,
    name: str,
    *,
    kind: SpanKind,
    attributes: dict[str, str | int | bool],
    links: Iterable[SpanContext | None],
    parent: otel_context.Context | None,
) -> Iterator[trace.Span]:
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=attributes,
        links=[Link(link) for link in links if link is not None and link.is_valid],
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            current.set_attribute("error.type", f"{type(exc).__module__}.{type(exc).__qualname__}")
            raise


def set_attribute(key: str, value: str | int | bool) -> None:
    """On the current span, when one is recording (e.g. a status known at the end)."""
    if enabled():
        trace.get_current_span().set_attribute(key, value)


def current() -> SpanContext | None:
    """The current span's context (to link a batch to its senders), or None when off."""
    if not enabled():
        return None
    found = trace.get_current_span().get_span_context()
    return found if found.is_valid else None


def extract(metadata: Mapping[str, Any]) -> otel_context.Context | None:
    """The caller's context from incoming ``traceparent``/``tracestate`` metadata."""
    if not enabled() or "traceparent" not in metadata:
        return None
    carrier = {k: v for k, v in metadata.items() if k in ("traceparent", "tracestate")}
    return _PROPAGATOR.extract(carrier)


def inject() -> Sequence[tuple[str, str]]:
    """gRPC metadata carrying the current span to the callee (empty when off)."""
    if not enabled():
        return ()
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return tuple(carrier.items())
