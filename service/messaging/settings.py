"""Every setting of the service, read once from ``MESSAGING_*`` environment variables.

Defaults run out of the box on one machine (SQLite, in-process backplane, a dev secret); the
``production`` mode refuses the defaults that are only safe on a laptop, so a misconfigured pod
fails at start-up with a message instead of serving with a guessable secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import urllib.parse
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_ADMIN_PASSWORD_CHARS = 16
DEV_JWT_SECRET = "dev-only-secret-change-me-0123456789abcdef"  # noqa: S105 - refused in production
SUPPORTED_JWT_ALGORITHMS = ("HS256", "RS256", "ES256")
MIN_HS256_SECRET_BYTES = 32
# A content type as RFC 6838 names them (no parameters), or a whole family: "image/*".
_TYPE_PART = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_CONTENT_TYPE_PATTERN = re.compile(rf"{_TYPE_PART}/(?:{_TYPE_PART}|\*)")
_TLS_FILES = (
    "grpc_tls_cert_file",
    "grpc_tls_key_file",
    "grpc_tls_client_ca_file",
    "connections_tls_ca_file",
    "connections_tls_cert_file",
    "connections_tls_key_file",
)


WEBHOOK_EVENT_TYPES = (
    "message.created",
    "message.updated",
    "message.deleted",
    "message.read",
    "conversation.created",
    "conversation.updated",
    "message.reported",
    "notification.requested",
)
WebhookEventType = Literal[
    "message.created",
    "message.updated",
    "message.deleted",
    "message.read",
    "conversation.created",
    "conversation.updated",
    "message.reported",
    "notification.requested",
]
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


class WebhookEndpointSetting(BaseModel):
    """One item of ``MESSAGING_WEBHOOKS``: what the operator writes (``secretEnv`` names the
    variable holding the secret, so the secret is never in the pod spec), or ``secret`` inline
    (a laptop, a test)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    url: str = Field(pattern=r"^https?://[^\s/]+", max_length=2048)
    secret: SecretStr = SecretStr("")
    secret_env: str = Field("", alias="secretEnv", max_length=256)
    events: list[WebhookEventType] = Field(default_factory=list)  # empty: every type

    @model_validator(mode="after")
    def _secret(self) -> Self:
        value = self.secret.get_secret_value()
        if self.secret_env:
            if value:
                raise ValueError(f"webhook {self.url}: give secret or secretEnv, not both")
            value = os.environ.get(self.secret_env, "")
            if not value:
                raise ValueError(f"webhook {self.url}: ${self.secret_env} is not set")
            object.__setattr__(self, "secret", SecretStr(value))
        if not value.startswith(WEBHOOK_SECRET_PREFIX):
            raise ValueError(f"webhook {self.url}: the secret must start with whsec_")
        try:
            key = base64.b64decode(value.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
        except binascii.Error:
            raise ValueError(f"webhook {self.url}: the secret is not whsec_<base64>") from None
        if not 24 <= len(key) <= 64:
            raise ValueError(f"webhook {self.url}: the secret must hold 24 to 64 bytes")
        return self

    @property
    def key(self) -> bytes:
        """The HMAC key (the base64 after ``whsec_``)."""
        return base64.b64decode(self.secret.get_secret_value().removeprefix(WEBHOOK_SECRET_PREFIX))


def _asyncpg_dsn(value: str) -> str:
    """Plain libpq-style DSNs (what a platform team keeps in a Secret) mean asyncpg."""
    for plain in ("postgresql://", "postgres://"):
        if value.startswith(plain):
            return "postgresql+asyncpg://" + value.removeprefix(plain)
    return value


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """The service's configuration; one instance is built at start-up and passed down."""

    model_config = SettingsConfigDict(env_prefix="MESSAGING_", extra="ignore", frozen=True)

    mode: Literal["dev", "production"] = "dev"

    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    # /metrics (and /healthz, /readyz again) on a port of its own that the public Service does
    # not expose; empty host means the HTTP host.
    metrics_host: str = ""
    metrics_port: int = Field(9090, ge=0, le=65535)
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)
    grpc_enabled: bool = True
    # TLS for the gRPC server (both files, PEM); a client CA on top turns on mutual TLS.
    grpc_tls_cert_file: Path | None = None
    grpc_tls_key_file: Path | None = None
    grpc_tls_client_ca_file: Path | None = None
    replica_id: str = Field(default_factory=_default_replica_id, min_length=1, max_length=128)

    database_url: str = "sqlite+aiosqlite:///./messaging.db"
    database_pool_size: int = Field(10, ge=1, le=200)
    database_echo: bool = False
    # A PostgreSQL streaming replica (hot standby) for history pages and conversation lists;
    # empty: every read on the primary. Reads wait at most database_read_max_wait_ms for the
    # replica to replay what was committed before them, then read the primary (read_replica.py).
    database_read_url: str = ""
    database_read_max_wait_ms: int = Field(50, ge=0, le=10_000)
    # Run migrations at start-up. Unset means: yes on SQLite (the embedded default), no on
    # PostgreSQL, where `messaging migrate` runs once per release (the operator's Job).
    auto_migrate: bool | None = None

    # Empty means the in-process backplane: one replica, no Redis needed.
    redis_url: str = ""
    # The URL names one node of a Redis Cluster (any: the others are found from it): sharded
    # pub/sub for the backplane, and keys hash-tagged by user (docs/redis-cluster.md).
    redis_cluster: bool = False
    redis_heartbeat_seconds: float = Field(5.0, gt=0, le=300)
    redis_replica_ttl_seconds: float = Field(15.0, gt=0, le=3600)
    # How often a replica compares its users' change logs with what it delivered (the backstop of
    # self-healing delivery: a change still undelivered one check later is filled from the log;
    # gaps it notices itself are filled at once).
    delivery_check_seconds: float = Field(2.0, ge=0.5, le=300)

    jwt_algorithms: list[Literal["HS256", "RS256", "ES256"]] = ["HS256"]
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    jwt_public_key: str = ""
    jwt_public_key_file: Path | None = None
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway_seconds: float = Field(30.0, ge=0, le=600)
    # RS256/ES256 keys from the identity provider's JWKS document instead of one public key.
    jwt_jwks_url: str = ""
    jwt_jwks_cache_seconds: float = Field(300.0, gt=0, le=86_400)
    jwt_jwks_min_refresh_seconds: float = Field(30.0, ge=0, le=3600)
    jwt_jwks_timeout_seconds: float = Field(3.0, gt=0, le=60)
    # How often expired sessions are looked for (one sweep per replica, not a timer per socket).
    session_sweep_seconds: float = Field(1.0, gt=0, le=60)

    # Signs page tokens so a client cannot forge a cursor; shared by every replica.
    cursor_secret: SecretStr = SecretStr("")

    connections_address: str = "127.0.0.1:50052"
    connections_timeout_seconds: float = Field(0.5, gt=0, le=30)
    connections_cache_ttl_seconds: float = Field(30.0, ge=0, le=3600)
    connections_cache_size: int = Field(100_000, ge=0)
    # Blocks (blocking.py): answers cached per pair like the Connections check, and dropped on
    # every replica at once when a block changes (through Redis); the TTL bounds what a replica
    # cut off from Redis could miss. A user may block at most ``max_blocked_per_user`` users.
    # A block change waits this long for every replica to confirm it dropped its cached answer.
    blocks_cache_ttl_seconds: float = Field(30.0, ge=0, le=3600)
    blocks_cache_size: int = Field(100_000, ge=0)
    blocks_invalidation_timeout_seconds: float = Field(1.0, gt=0, le=30)
    max_blocked_per_user: int = Field(1000, ge=1, le=100_000)
    # TLS to the Connections service: a CA file turns it on; a cert and key add a client identity.
    connections_tls_ca_file: Path | None = None
    connections_tls_cert_file: Path | None = None
    connections_tls_key_file: Path | None = None

    # A frame beyond this closes the connection at the transport (as in every Socket.IO server);
    # anything smaller is parsed and, if it breaks a rule, answered with VALIDATION_FAILED.
    max_payload_bytes: int = Field(1_048_576, ge=16_384, le=16_777_216)
    socketio_transports: list[Literal["websocket", "polling"]] = ["polling", "websocket"]
    socketio_ping_interval_seconds: float = Field(25.0, gt=0)
    socketio_ping_timeout_seconds: float = Field(20.0, gt=0)
    # Browser origins allowed to call HTTP and Socket.IO (JSON list). Empty: any origin in dev
    # (without credentials), none but the service's own in production.
    cors_allowed_origins: Annotated[list[str], NoDecode] = []
    # The lean websocket path (websocket_transport.py and the lean event dispatch); false falls
    # back to python-engineio's stock websocket transport and python-socketio's dispatch.
    socketio_fast_path: bool = True
    # Transport limits (docs/security.md, "Transport limits").
    # A socket that has not completed the Socket.IO CONNECT this long after its Engine.IO
    # handshake is closed (Socket.IO's own server: connectTimeout, 45 s).
    socketio_connect_timeout_seconds: float = Field(45.0, gt=0, le=3600)
    # Bytes written for a socket and not yet taken by its client; past this the client is a
    # slow consumer and its connection is dropped instead of buffered.
    socketio_max_outbound_buffer_bytes: int = Field(4_194_304, ge=65_536, le=1_073_741_824)
    # Malformed packets (Engine.IO or Socket.IO framing) a socket may send before it is closed.
    socketio_max_protocol_errors: int = Field(20, ge=1, le=100_000)
    # Binary attachments one Socket.IO packet may announce (their bytes together are also held
    # to max_payload_bytes); a packet announcing more closes the socket.
    socketio_max_binary_attachments: int = Field(10, ge=0, le=1000)

    # Per-user limits of what one user may ask of the cluster (see docs/security.md). Each event
    # class is a token bucket: ``*_per_second`` sustained, ``*_burst`` at once. Shared by every
    # replica through Redis; each process also holds the same limit locally, so it holds when
    # Redis is down.
    rate_limits_enabled: bool = True
    rate_limit_send_per_second: float = Field(20.0, gt=0)
    rate_limit_send_burst: int = Field(100, ge=1)
    rate_limit_typing_per_second: float = Field(5.0, gt=0)
    rate_limit_typing_burst: int = Field(20, ge=1)
    rate_limit_presence_per_second: float = Field(5.0, gt=0)
    rate_limit_presence_burst: int = Field(30, ge=1)
    rate_limit_conversations_per_second: float = Field(2.0, gt=0)
    rate_limit_conversations_burst: int = Field(30, ge=1)
    rate_limit_receipts_per_second: float = Field(50.0, gt=0)
    rate_limit_receipts_burst: int = Field(200, ge=1)
    rate_limit_sync_per_second: float = Field(5.0, gt=0)
    rate_limit_sync_burst: int = Field(30, ge=1)
    # Sends of one user waiting for their commit: past it, RATE_LIMITED (the replica's commit
    # queue is shared; one user's pipelined sends must not fill it for everyone).
    max_sends_in_flight_per_user: int = Field(32, ge=1, le=10_000)
    max_sockets_per_user: int = Field(20, ge=1, le=10_000)
    # Members of a group, its creator included (createConversation and addParticipants refuse
    # more with VALIDATION_FAILED). Every message of a group writes a log row per member.
    group_max_members: int = Field(50, ge=2, le=1000)
    # How long after sending it its author may still edit a message (default 24 h).
    edit_window_seconds: float = Field(86_400.0, gt=0, le=31_536_000)

    # Attachments (docs/attachments.md). Unset backend: local disk in dev mode (the embedded
    # default serves the files itself), off in production (the operator sets it explicitly).
    attachments_backend: Literal["off", "s3", "local"] | None = None
    # The local store's files, and the base URL its signed links point at (empty: this
    # process's own HTTP address, right for `messaging dev`).
    attachments_dir: Path = Path("./attachments")
    attachments_public_url: str = ""
    attachments_max_bytes: int = Field(
        26_214_400, ge=1, le=5_368_709_120
    )  # 25 MiB; S3 PUT max 5 GiB
    # Allowed content types: exact ("application/pdf") or a whole family ("image/*").
    attachments_content_types: Annotated[list[str], NoDecode] = [
        "image/*",
        "application/pdf",
        "text/plain",
        "audio/*",
        "video/*",
    ]
    attachments_upload_url_seconds: int = Field(900, ge=10, le=604_800)
    # Download links are signed afresh each time a message is read, so they can be short.
    attachments_download_url_seconds: int = Field(900, ge=10, le=604_800)
    # Uploads never attached to a message are deleted this long after createUpload.
    attachments_unattached_ttl_seconds: float = Field(86_400.0, ge=60, le=2_592_000)
    attachments_sweep_seconds: float = Field(300.0, gt=0, le=86_400)
    # Signs the local store's links (empty: derived from the HS256 secret, like page tokens).
    attachments_secret: SecretStr = SecretStr("")
    s3_endpoint_url: str = ""  # empty: AWS S3 of the region
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""  # empty (both): the SDK's usual chain (IAM role, env, files)
    s3_secret_access_key: SecretStr = SecretStr("")
    # Path-style URLs (endpoint/bucket/key) rather than virtual-hosted (bucket.endpoint/key):
    # what MinIO, SeaweedFS, versitygw and most self-hosted stores need.
    s3_path_style: bool = True
    # The endpoint as clients reach it, when that differs from the one this service uses (an
    # in-cluster Service name vs. a public host): presigned URLs are made for it.
    s3_public_url: str = ""

    drain_window_seconds: float = Field(10.0, ge=0, le=3600)
    shutdown_deadline_seconds: float = Field(25.0, gt=0, le=3600)

    # Webhooks (docs/webhooks.md). Endpoints as the operator writes them (a JSON list); none
    # means no event is written at all.
    webhooks: Annotated[list[WebhookEndpointSetting], NoDecode] = []
    # Print every event on standard output instead of (or besides) POSTing it (`messaging dev`).
    webhooks_console: bool = False
    # notification.requested: a recipient none of whose devices marked a message delivered this
    # long after it was committed; the preview (the start of the text) can be left out.
    webhook_notify_delay_seconds: float = Field(15.0, ge=0, le=86_400)
    webhook_notify_preview: bool = True
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # A replica holds a claimed delivery this long; past it another replica may send it again.
    webhook_lease_seconds: float = Field(60.0, gt=0, le=3600)
    # Retries: jittered exponential back-off from base to max, for at least the window.
    webhook_retry_base_seconds: float = Field(5.0, gt=0, le=3600)
    webhook_retry_max_seconds: float = Field(3600.0, gt=0, le=86_400)
    webhook_retry_window_seconds: float = Field(86_400.0, ge=60, le=30 * 86_400)
    webhook_poll_seconds: float = Field(0.5, gt=0, le=60)
    # Requests in flight per replica (also the HTTP client's connection limit).
    webhook_concurrency: int = Field(32, ge=1, le=1000)
    # HTTP/2 (httpx with h2) to endpoints that offer it over TLS; off: aiohttp's HTTP/1.1 client,
    # which costs a fraction of the CPU per request (BENCHMARKS.md, "Webhooks").
    webhook_http2: bool = False

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] | None = None
    # Keys the hash that stands for user ids in logs; set the same value on every replica to
    # follow a user across them. Empty: a random key per process.
    log_user_hash_secret: SecretStr = SecretStr("")

    # OpenTelemetry tracing (tracing.py; docs/observability.md): the OTLP/gRPC collector, e.g.
    # http://otel-collector:4317 (https:// for TLS). Empty: off, nothing is recorded or loaded.
    otel_endpoint: str = ""
    otel_service_name: str = Field("messaging", min_length=1, max_length=128)
    # The share of new traces recorded; a caller's sampled traceparent is always followed.
    otel_sample_ratio: float = Field(1.0, ge=0, le=1)

    # The demo web client at ``/`` and its ``POST /demo/token`` (mints tokens for the demo users):
    # ``messaging dev`` turns it on; production mode refuses it (anyone could sign in as anyone).
    demo_client: bool = False

    # Socket.IO's Admin UI on the /admin namespace (admin_ui.py; docs/security.md), with its own
    # login, never a user's JWT. Off by default; read-only and light "production" reporting
    # unless asked otherwise.
    socketio_admin_enabled: bool = False
    socketio_admin_username: str = Field("admin", min_length=1, max_length=128)
    socketio_admin_password: SecretStr = SecretStr("")
    socketio_admin_read_only: bool = True
    socketio_admin_mode: Literal["production", "development"] = "production"

    @field_validator("jwt_algorithms")
    @classmethod
    def _at_least_one_algorithm(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one JWT algorithm must be configured")
        return value

    @field_validator("cors_allowed_origins", "attachments_content_types", mode="before")
    @classmethod
    def _list_from_text(cls, value: object) -> object:
        """A JSON list, or items separated by commas (what a CRD field or a shell gives)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*":
                raise ValueError(
                    "cors_allowed_origins lists origins; '*' is not one (an empty list already "
                    "allows any origin in dev mode)"
                )
            scheme, sep, rest = origin.partition("://")
            if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
                raise ValueError(
                    f"cors origin {origin!r} must look like https://host[:port] (no path)"
                )
        return value

    @field_validator("webhooks", mode="before")
    @classmethod
    def _webhooks_from_text(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value

    @field_validator("webhooks")
    @classmethod
    def _distinct_webhooks(
        cls, value: list[WebhookEndpointSetting]
    ) -> list[WebhookEndpointSetting]:
        urls = [hook.url for hook in value]
        if len(set(urls)) != len(urls):
            raise ValueError("MESSAGING_WEBHOOKS lists the same url twice")
        return value

    @field_validator("attachments_content_types")
    @classmethod
    def _content_types(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _CONTENT_TYPE_PATTERN.fullmatch(item.lower()):
                raise ValueError(f"content type {item!r} must look like type/subtype or type/*")
        return [item.lower() for item in value]

    @field_validator("s3_endpoint_url", "s3_public_url", "attachments_public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("otel_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str) -> str:
        if not value:
            return value
        scheme, _, rest = value.partition("://")
        host, _, port = rest.rstrip("/").rpartition(":")
        if (
            scheme not in ("http", "https")
            or not host
            or not port.isdigit()
            or "/" in rest.rstrip("/")
        ):
            raise ValueError(
                "otel_endpoint must be http://host:port or https://host:port (OTLP/gRPC)"
            )
        return value.rstrip("/")

    @field_validator("jwt_jwks_url")
    @classmethod
    def _jwks_url(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("jwt_jwks_url must be an http:// or https:// URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        value = _asyncpg_dsn(value)
        if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError(
                "database_url must be a postgresql:// (asyncpg) or sqlite+aiosqlite:// URL"
            )
        return value

    @field_validator("database_read_url")
    @classmethod
    def _known_read_database(cls, value: str) -> str:
        value = _asyncpg_dsn(value)
        if value and not value.startswith("postgresql+asyncpg://"):
            raise ValueError(
                "database_read_url must be a postgresql:// URL of a streaming replica (or empty)"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _known_redis(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _redis_cluster_node(self) -> Self:
        """A cluster is reached through a node's network address, and has only database 0."""
        if not self.redis_cluster:
            return self
        if not self.redis_url:
            raise ValueError("redis_cluster needs redis_url (the address of one cluster node)")
        if self.redis_url.startswith("unix://"):
            raise ValueError("redis_cluster needs a redis:// or rediss:// URL, not unix://")
        database = urllib.parse.urlsplit(self.redis_url).path.strip("/")
        if database not in ("", "0"):
            raise ValueError(f"a Redis Cluster has only database 0: drop /{database} from the URL")
        return self

    @model_validator(mode="after")
    def _consistent_keys(self) -> Self:
        """Tokens can be verified, and page tokens signed alike on every replica."""
        uses_hs = "HS256" in self.jwt_algorithms
        uses_pk = any(alg in self.jwt_algorithms for alg in ("RS256", "ES256"))
        secret = self.jwt_secret.get_secret_value()
        if uses_hs and self.mode == "production":
            if secret == DEV_JWT_SECRET:
                raise ValueError("MESSAGING_JWT_SECRET must be set in production mode")
            if len(secret.encode()) < MIN_HS256_SECRET_BYTES:
                raise ValueError(
                    f"MESSAGING_JWT_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes "
                    "for HS256"
                )
        if uses_pk and not self.public_key and not self.jwt_jwks_url:
            raise ValueError(
                "RS256/ES256 need MESSAGING_JWT_PUBLIC_KEY, MESSAGING_JWT_PUBLIC_KEY_FILE or "
                "MESSAGING_JWT_JWKS_URL"
            )
        cursor_secret = self.cursor_secret.get_secret_value()
        if cursor_secret and len(cursor_secret.encode()) < MIN_HS256_SECRET_BYTES:
            raise ValueError(
                f"MESSAGING_CURSOR_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes"
            )
        if self.mode == "production" and not cursor_secret and not uses_hs:
            # With only public keys configured there is no shared secret to sign page tokens
            # with (the public key would make them forgeable), and a random one per replica
            # would break paging across replicas.
            raise ValueError(
                "MESSAGING_CURSOR_SECRET must be set in production mode when no HS256 secret is "
                "configured (it signs page tokens; every replica needs the same one)"
            )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        admin_password = self.socketio_admin_password.get_secret_value()
        if self.socketio_admin_enabled and len(admin_password) < MIN_ADMIN_PASSWORD_CHARS:
            raise ValueError(
                "MESSAGING_SOCKETIO_ADMIN_PASSWORD must be at least "
                f"{MIN_ADMIN_PASSWORD_CHARS} characters when the Admin UI is enabled"
            )
        if self.mode == "production" and self.demo_client:
            raise ValueError("MESSAGING_DEMO_CLIENT mints tokens for anyone: dev mode only")
        if self.mode == "production" and self.database_url.startswith("sqlite"):
            raise ValueError("production mode needs a PostgreSQL MESSAGING_DATABASE_URL")
        if self.database_read_url and not self.uses_postgres:
            raise ValueError(
                "MESSAGING_DATABASE_READ_URL needs a PostgreSQL MESSAGING_DATABASE_URL (the "
                "replica streams from that primary)"
            )
        if self.database_read_url and self.database_read_url == self.database_url:
            raise ValueError("MESSAGING_DATABASE_READ_URL must name the replica, not the primary")
        if self.metrics_port == self.http_port != 0:
            raise ValueError("MESSAGING_METRICS_PORT must differ from MESSAGING_HTTP_PORT")
        if self.shutdown_deadline_seconds <= self.drain_window_seconds:
            raise ValueError("shutdown_deadline_seconds must exceed drain_window_seconds")
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            # Otherwise a slow answer could still be on its way when another replica sends again.
            raise ValueError("webhook_lease_seconds must exceed webhook_timeout_seconds")
        if self.webhook_retry_max_seconds < self.webhook_retry_base_seconds:
            raise ValueError(
                "webhook_retry_max_seconds must be at least webhook_retry_base_seconds"
            )
        return self

    @model_validator(mode="after")
    def _consistent_tls(self) -> Self:
        if (self.grpc_tls_cert_file is None) != (self.grpc_tls_key_file is None):
            raise ValueError(
                "MESSAGING_GRPC_TLS_CERT_FILE and MESSAGING_GRPC_TLS_KEY_FILE go together"
            )
        if self.grpc_tls_client_ca_file is not None and self.grpc_tls_cert_file is None:
            raise ValueError("MESSAGING_GRPC_TLS_CLIENT_CA_FILE needs the server certificate too")
        if (self.connections_tls_cert_file is None) != (self.connections_tls_key_file is None):
            raise ValueError(
                "MESSAGING_CONNECTIONS_TLS_CERT_FILE and MESSAGING_CONNECTIONS_TLS_KEY_FILE "
                "go together"
            )
        if self.connections_tls_cert_file is not None and self.connections_tls_ca_file is None:
            raise ValueError(
                "a Connections client certificate needs MESSAGING_CONNECTIONS_TLS_CA_FILE"
            )
        for name in _TLS_FILES:
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"MESSAGING_{name.upper()} {str(path)!r} is not a readable file")
        return self

    @model_validator(mode="after")
    def _consistent_attachments(self) -> Self:
        if self.effective_attachments_backend == "s3":
            if not self.s3_bucket:
                raise ValueError("MESSAGING_ATTACHMENTS_BACKEND=s3 needs MESSAGING_S3_BUCKET")
            if bool(self.s3_access_key_id) != bool(self.s3_secret_access_key.get_secret_value()):
                raise ValueError(
                    "MESSAGING_S3_ACCESS_KEY_ID and MESSAGING_S3_SECRET_ACCESS_KEY go together"
                )
        secret = self.attachments_secret.get_secret_value()
        if secret and len(secret.encode()) < MIN_HS256_SECRET_BYTES:
            raise ValueError(
                f"MESSAGING_ATTACHMENTS_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes"
            )
        return self

    @property
    def effective_attachments_backend(self) -> Literal["off", "s3", "local"]:
        if self.attachments_backend is not None:
            return self.attachments_backend
        return "local" if self.mode == "dev" else "off"

    @cached_property
    def attachments_key(self) -> bytes:
        """Key of the local store's signed links: like ``cursor_key``, never the JWT key itself."""
        if secret := self.attachments_secret.get_secret_value():
            return secret.encode()
        jwt_secret = self.jwt_secret.get_secret_value()
        if "HS256" in self.jwt_algorithms and jwt_secret:
            return hmac.new(jwt_secret.encode(), b"messaging attachments", hashlib.sha256).digest()
        return secrets.token_bytes(32)

    @cached_property
    def public_key(self) -> str:
        if self.jwt_public_key:
            return self.jwt_public_key
        if self.jwt_public_key_file is not None:
            return self.jwt_public_key_file.read_text()
        return ""

    @property
    def rate_limit_budgets(self) -> dict[str, tuple[float, int]]:
        """Each limit's (tokens per second, burst), by the name ``ratelimit`` knows it by."""
        return {
            name: (
                getattr(self, f"rate_limit_{name}_per_second"),
                getattr(self, f"rate_limit_{name}_burst"),
            )
            for name in ("send", "typing", "presence", "conversations", "receipts", "sync")
        }

    @property
    def migrates_at_startup(self) -> bool:
        return self.auto_migrate if self.auto_migrate is not None else not self.uses_postgres

    @property
    def uses_redis(self) -> bool:
        return bool(self.redis_url)

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if self.mode == "dev" else "json"

    @property
    def effective_metrics_host(self) -> str:
        return self.metrics_host or self.http_host

    @property
    def cors_any_origin(self) -> bool:
        """Dev mode with no list: any browser origin (never with credentials)."""
        return self.mode == "dev" and not self.cors_allowed_origins

    @cached_property
    def cursor_key(self) -> bytes:
        """Key for page-token signatures, never one a client can know.

        The dedicated secret when set; else a key derived from the HS256 secret (every replica
        has it, so page and sync tokens work on any replica; derived, so a token never signs with
        the JWT key itself; the development secret included: whoever knows it can forge any
        JWT already); else, in dev mode only (production refuses to start), a random key of this
        process.
        """
        if secret := self.cursor_secret.get_secret_value():
            return secret.encode()
        jwt_secret = self.jwt_secret.get_secret_value()
        if "HS256" in self.jwt_algorithms and jwt_secret:
            return hmac.new(jwt_secret.encode(), b"messaging page tokens", hashlib.sha256).digest()
        return secrets.token_bytes(32)
