"""Logging: one JSON object per line in production, readable lines in development.

Fields passed with ``extra={...}`` become keys of the JSON object, and so do the fields of the
request being handled (``log_context``: request id, socket id, hashed user id, event or method),
so every line a request causes can be found by its request id without parsing messages.
"""

from __future__ import annotations

import contextvars
import hashlib
import itertools
import logging
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

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


def user_hash(user_id: str) -> str:
    """A short stable digest of a user id: logs can follow a user without naming them."""
    return hashlib.blake2s(user_id.encode(), digest_size=6).hexdigest()


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Add ``fields`` to every log line written inside the block (and its awaited calls)."""
    merged = {**(_CONTEXT.get() or {}), **fields}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(_CONTEXT.get() or {})
    fields.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
    return fields


class JsonFormatter(logging.Formatter):
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

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += "  " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def configure_logging(level: str, fmt: Literal["json", "console"]) -> None:
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
