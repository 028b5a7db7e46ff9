"""Logging: one JSON object per line in production, readable lines in development.

Fields passed with ``extra={...}`` become keys of the JSON object, and so do the fields of the
request being handled (``log_context``: request id, socket id, hashed user id, event or method),
so every line a request causes can be found by its request id without parsing messages.

Logs never carry what users wrote or who they are: user ids appear only as a keyed hash (HMAC
with a secret of the deployment, or of the process), and database errors, whose text quotes the
SQL statement and its parameters (other users' messages, raw user ids), are written as their
class, SQLSTATE and stack frames only, wherever they are logged (``describe_error``, and the
formatters' tracebacks).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import itertools
import logging
import secrets
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from opentelemetry import trace

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


_CONTEXT: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "log_context", default=None
)


_ID_PREFIX = secrets.token_hex(4)  # tells processes apart
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """Unique per process and cheap (no random bytes per request): prefix plus a counter."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


# Keys the user hash. Random per process unless the deployment configures one (then the same
# user has the same hash on every replica, and still nobody without the key can test a guess).
_user_hash_key = [secrets.token_bytes(32)]


def set_user_hash_key(key: bytes) -> None:
    _user_hash_key[0] = key


def user_hash(user_id: str) -> str:
    """A keyed digest of a user id: logs can follow a user without naming them.

    Unkeyed, a short hash of an id is a lookup table away from the id (user ids are guessable:
    emails, handles, sequential numbers); the HMAC key makes that table impossible to build.
    """
    digest = hmac.new(_user_hash_key[0], user_id.encode(), hashlib.sha256).hexdigest()
    return digest[:16]


# Exceptions whose text may quote SQL, its parameters or row values.
_DATABASE_MODULES = ("sqlalchemy", "asyncpg", "aiosqlite", "sqlite3", "psycopg")


def _from_database(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in _DATABASE_MODULES


def describe_error(exc: BaseException) -> str:
    """A one-line account of an exception that is safe to log.

    Database errors are reduced to their class and SQLSTATE (and the driver error's class):
    their messages quote statements, parameters and the rows' values.
    """
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if not _from_database(exc):
        return f"{name}: {exc}"
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(exc, "sqlstate", None)
    parts = [name]
    if orig is not None:
        parts.append(f"driver={type(orig).__module__}.{type(orig).__qualname__}")
    if sqlstate:
        parts.append(f"sqlstate={sqlstate}")
    return " ".join(parts) + " (message redacted: database errors quote SQL and values)"


def format_exception(exc: BaseException) -> str:
    """A traceback like Python's, with every database error's message redacted."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    parts = []
    for index, item in enumerate(reversed(chain)):
        if index:
            parts.append("\n\nThe above exception led to the following one:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(item.__traceback__))
        parts.append(describe_error(item))
    return "".join(parts)


class log_context:  # noqa: N801 - used like the function it was
    """Add ``fields`` to every log line written inside the block (and its awaited calls).

    A class rather than a ``@contextmanager`` generator: every socket event enters one, and the
    generator's machinery cost five Python calls per block.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: str) -> None:
        self._fields = fields

    def __enter__(self) -> None:
        self._token = _CONTEXT.set({**(_CONTEXT.get() or {}), **self._fields})

    def __exit__(self, *exc: object) -> None:
        _CONTEXT.reset(self._token)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(_CONTEXT.get() or {})
    # The span being recorded (tracing.py), so a trace and its log lines find each other. With
    # tracing off no span is ever current and this adds nothing.
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    fields.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
    return fields


def _format_exc_info(exc_info: Any) -> str:
    exc = exc_info[1] if isinstance(exc_info, tuple) else None
    return format_exception(exc) if isinstance(exc, BaseException) else ""


class JsonFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return _format_exc_info(ei)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return _format_exc_info(ei)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += "  " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def configure_logging(
    level: str, fmt: Literal["json", "console"], *, user_hash_key: bytes = b""
) -> None:
    if user_hash_key:
        set_user_hash_key(user_hash_key)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access logs of every polling request and websocket frame would drown the service's own;
    # engineio warns for every ack whose socket closed meanwhile (routine while draining).
    for noisy in ("uvicorn.access", "socketio.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("engineio.server").setLevel(logging.ERROR)
    for framework in ("uvicorn", "uvicorn.error", "kopf"):
        logging.getLogger(framework).handlers[:] = []
        logging.getLogger(framework).propagate = True
