"""Which database errors mean "the database is away or busy, retry" (UNAVAILABLE) and which are
bugs (INTERNAL): by SQLSTATE, with asyncpg's own exception classes."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.exc import DBAPIError

from messaging.transactions import is_unavailability

RETRYABLE = [
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01: pg_terminate_backend, fast shutdown
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
    asyncpg.exceptions.QueryCanceledError,  # 57014: statement timeout
    asyncpg.exceptions.SerializationError,  # 40001
    asyncpg.exceptions.DeadlockDetectedError,  # 40P01
    asyncpg.exceptions.ConnectionFailureError,  # 08006
]
BUGS = [
    asyncpg.exceptions.UniqueViolationError,
    asyncpg.exceptions.NotNullViolationError,
    asyncpg.exceptions.UndefinedTableError,
    asyncpg.exceptions.SyntaxOrAccessError,
]


def _wrapped(error: type[Exception]) -> DBAPIError:
    return DBAPIError("SELECT 1", {}, error("from the server"))


@pytest.mark.parametrize("error", RETRYABLE, ids=lambda e: e.__name__)
def test_the_database_being_away_or_busy_is_retryable(error: type[Exception]) -> None:
    assert is_unavailability(_wrapped(error))


@pytest.mark.parametrize("error", BUGS, ids=lambda e: e.__name__)
def test_an_error_in_the_request_itself_is_not(error: type[Exception]) -> None:
    assert not is_unavailability(_wrapped(error))


def test_a_refused_connection_is_retryable() -> None:
    assert is_unavailability(DBAPIError("connect", {}, ConnectionRefusedError(111, "refused")))
