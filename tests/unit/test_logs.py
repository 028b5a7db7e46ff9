"""Log lines never quote database errors' text, and user ids only as a keyed hash."""

from __future__ import annotations

import hashlib
import hmac
import logging

import orjson
import pytest
from sqlalchemy.exc import IntegrityError

from messaging import logs


class _DriverError(Exception):
    sqlstate = "23505"


_DriverError.__module__ = "asyncpg.exceptions"


# Held in constants so that the traceback's source lines do not quote them.
DRIVER_MESSAGE = "duplicate key value: (alice@example.com, 'my secret message')"
STATEMENT = "INSERT INTO messages VALUES ($1)"
PARAMETERS = ("my secret message",)


def _database_error() -> IntegrityError:
    try:
        try:
            raise _DriverError(DRIVER_MESSAGE)
        except _DriverError as driver:
            raise IntegrityError(STATEMENT, PARAMETERS, driver) from driver
    except IntegrityError as exc:
        return exc


def test_a_database_error_is_described_by_class_and_sqlstate_only() -> None:
    described = logs.describe_error(_database_error())
    assert "sqlstate=23505" in described
    assert "IntegrityError" in described
    assert "secret" not in described and "INSERT" not in described


def test_tracebacks_in_json_logs_redact_every_database_error_of_the_chain() -> None:
    exc = _database_error()
    record = logging.makeLogRecord(
        {"msg": "boom", "levelname": "ERROR", "exc_info": (type(exc), exc, exc.__traceback__)}
    )
    entry = orjson.loads(logs.JsonFormatter().format(record))
    assert "Traceback" in entry["exc"]
    assert "_database_error" in entry["exc"]  # the frames are kept
    for secret in ("secret", "alice@example.com", "INSERT INTO", "[parameters"):
        assert secret not in entry["exc"], secret
    console = logs.ConsoleFormatter().format(record)
    assert "secret" not in console and "sqlstate=23505" in console


def test_other_errors_keep_their_message() -> None:
    assert logs.describe_error(ValueError("bad value")) == "builtins.ValueError: bad value"


def test_the_user_hash_is_an_hmac_under_the_configured_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logs, "_user_hash_key", [b"k1"])
    first = logs.user_hash("alice")
    assert first == hmac.new(b"k1", b"alice", hashlib.sha256).hexdigest()[:16]
    assert first != hashlib.blake2s(b"alice", digest_size=6).hexdigest()
    logs.set_user_hash_key(b"k2")
    assert logs.user_hash("alice") != first
