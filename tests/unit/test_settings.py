"""Settings run out of the box and refuse nonsense at start-up, with a message that says why."""

from __future__ import annotations

from typing import Any, cast

import pytest
from pydantic import ValidationError

from messaging.settings import DEV_JWT_SECRET, Settings


def test_defaults_run_on_one_machine_without_any_environment() -> None:
    settings = Settings()
    assert settings.database_url.startswith("sqlite+aiosqlite://")
    assert not settings.uses_redis
    assert settings.migrates_at_startup
    assert settings.jwt_algorithms == ["HS256"]


def test_production_refuses_the_development_secret() -> None:
    with pytest.raises(ValidationError, match="MESSAGING_JWT_SECRET must be set"):
        Settings(mode="production", database_url="postgresql://db/messaging")
    assert DEV_JWT_SECRET  # the refused value is the one the defaults use


def test_production_refuses_an_hs256_secret_shorter_than_32_bytes() -> None:
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        Settings(mode="production", database_url="postgresql://db/m", jwt_secret="short")


def test_production_refuses_sqlite() -> None:
    with pytest.raises(ValidationError, match="PostgreSQL"):
        Settings(mode="production", jwt_secret="x" * 32)


def test_a_plain_postgres_dsn_means_asyncpg() -> None:
    settings = Settings(database_url="postgres://u:p@db:5432/m")
    assert settings.database_url == "postgresql+asyncpg://u:p@db:5432/m"
    assert settings.uses_postgres
    assert not settings.migrates_at_startup


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("database_url", "mysql://db/m", "database_url"),
        ("redis_url", "http://redis:6379", "redis_url"),
        ("http_port", 70000, "http_port"),
        ("jwt_algorithms", ["none"], "jwt_algorithms"),
        ("jwt_algorithms", [], "at least one JWT algorithm"),
        ("jwt_algorithms", ["RS256"], "MESSAGING_JWT_PUBLIC_KEY"),
        ("drain_window_seconds", 60, "shutdown_deadline_seconds must exceed"),
    ],
)
def test_nonsense_fails_fast_naming_the_setting(field: str, value: object, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(**cast(dict[str, Any], {field: value}))


def test_settings_are_read_from_messaging_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESSAGING_HTTP_PORT", "9123")
    monkeypatch.setenv("MESSAGING_JWT_ALGORITHMS", '["HS256", "ES256"]')
    monkeypatch.setenv("MESSAGING_JWT_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----...")
    settings = Settings()
    assert settings.http_port == 9123
    assert settings.jwt_algorithms == ["HS256", "ES256"]
