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
    assert settings.edit_window_seconds == 24 * 3600


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
        ("edit_window_seconds", 0, "edit_window_seconds"),
        ("edit_window_seconds", -1, "edit_window_seconds"),
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


PUBLIC_KEY = "-----BEGIN PUBLIC KEY-----\nnot checked here\n-----END PUBLIC KEY-----\n"


def test_production_with_public_keys_only_refuses_to_start_without_a_cursor_secret() -> None:
    """Page tokens used to be signed with the public key, so anyone could forge them."""
    with pytest.raises(ValidationError, match="MESSAGING_CURSOR_SECRET must be set"):
        Settings(
            mode="production",
            database_url="postgresql://db/m",
            jwt_algorithms=["RS256"],
            jwt_public_key=PUBLIC_KEY,
        )
    settings = Settings(
        mode="production",
        database_url="postgresql://db/m",
        jwt_algorithms=["RS256"],
        jwt_public_key=PUBLIC_KEY,
        cursor_secret="c" * 32,
    )
    assert settings.cursor_key == b"c" * 32


def test_page_tokens_are_never_signed_with_a_key_a_client_can_know() -> None:
    public_only = Settings(jwt_algorithms=["RS256"], jwt_public_key=PUBLIC_KEY)
    assert PUBLIC_KEY.encode() not in public_only.cursor_key
    assert (
        public_only.cursor_key
        != Settings(jwt_algorithms=["ES256"], jwt_public_key=PUBLIC_KEY).cursor_key
    )
    assert Settings().cursor_key != DEV_JWT_SECRET.encode()  # the dev secret is public too
    shared = Settings(jwt_secret="s" * 40)
    assert shared.cursor_key == Settings(jwt_secret="s" * 40).cursor_key  # replicas agree
    assert shared.cursor_key != b"s" * 40  # derived, not the JWT key itself


def test_a_short_cursor_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="CURSOR_SECRET must be at least 32 bytes"):
        Settings(cursor_secret="short")


@pytest.mark.parametrize("origin", ["*", "example.com", "https://a.example/path", "ftp://x"])
def test_cors_origins_must_be_origins(origin: str) -> None:
    with pytest.raises(ValidationError, match="cors"):
        Settings(cors_allowed_origins=[origin])


def test_the_metrics_port_defaults_to_9090_on_the_http_host() -> None:
    settings = Settings(http_host="0.0.0.0")
    assert (settings.effective_metrics_host, settings.metrics_port) == ("0.0.0.0", 9090)
    assert Settings(metrics_host="10.0.0.1").effective_metrics_host == "10.0.0.1"


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"grpc_tls_cert_file": "/etc/hostname"}, "go together"),
        ({"grpc_tls_client_ca_file": "/etc/hostname"}, "needs the server certificate"),
        ({"connections_tls_cert_file": "/etc/hostname"}, "go together"),
        (
            {
                "connections_tls_cert_file": "/etc/hostname",
                "connections_tls_key_file": "/etc/hostname",
            },
            "needs MESSAGING_CONNECTIONS_TLS_CA_FILE",
        ),
        ({"connections_tls_ca_file": "/nonexistent/ca.pem"}, "not a readable file"),
    ],
)
def test_tls_settings_that_cannot_work_are_refused(values: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(**cast(Any, values))


@pytest.mark.parametrize(
    "text",
    ['["https://a.example", "http://localhost:3000"]', "https://a.example, http://localhost:3000"],
)
def test_cors_origins_are_read_as_a_json_list_or_comma_separated(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESSAGING_CORS_ALLOWED_ORIGINS", text)
    assert Settings().cors_allowed_origins == ["https://a.example", "http://localhost:3000"]


def test_no_read_replica_by_default() -> None:
    assert Settings().database_read_url == ""


def test_a_plain_postgres_read_dsn_means_asyncpg() -> None:
    settings = Settings(
        database_url="postgresql://primary/messaging",
        database_read_url="postgres://replica/messaging",
    )
    assert settings.database_read_url == "postgresql+asyncpg://replica/messaging"


def test_a_sqlite_read_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="streaming replica"):
        Settings(
            database_url="postgresql://primary/messaging",
            database_read_url="sqlite+aiosqlite:///./replica.db",
        )


def test_a_read_url_without_a_postgres_primary_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs a PostgreSQL MESSAGING_DATABASE_URL"):
        Settings(database_read_url="postgresql://replica/messaging")


def test_a_read_url_naming_the_primary_is_refused() -> None:
    with pytest.raises(ValidationError, match="not the primary"):
        Settings(
            database_url="postgresql://db/messaging", database_read_url="postgres://db/messaging"
        )


def test_a_negative_read_wait_is_refused() -> None:
    with pytest.raises(ValidationError, match="database_read_max_wait_ms"):
        Settings(database_read_max_wait_ms=-1)
