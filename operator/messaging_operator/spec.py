"""The MessagingCluster's spec as typed, validated values, plus the names every module shares.

The CRD's OpenAPI schema (crds/) already rejects most bad specs at the API server, and fills in
its defaults. The operator validates again because it also meets objects written before a schema
change, and because some rules (a pod-template override that does not merge) only show when the
children are built. The defaults here mirror the CRD's so both paths agree.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from messaging_operator.errors import InvalidSpecError

GROUP = "messaging.platform.io"
VERSION = "v1alpha1"
PLURAL = "messagingclusters"
KIND = "MessagingCluster"
API_VERSION = f"{GROUP}/{VERSION}"

FIELD_MANAGER = "messaging-operator"
MANAGED_BY = "messaging-operator"
PART_OF = "messaging-platform"

# Children append suffixes such as "-migrate-0123456789" and must stay valid DNS-1035 labels.
MAX_NAME_LENGTH = 40
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

HTTP_CONTAINER_PORT = 8000
GRPC_CONTAINER_PORT = 50051
REDIS_PORT = 6379


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )


class SecretKeyRef(_Model):
    name: str = Field(min_length=1)
    key: str = Field(min_length=1)


class LocalObjectReference(_Model):
    name: str = Field(min_length=1)


class Replicas(_Model):
    min: int = Field(2, ge=1, le=1000)
    max: int = Field(10, ge=1, le=1000)
    # The /scale subresource's specReplicasPath: the count an HPA or KEDA (or `kubectl scale`)
    # writes. Only read when autoscaling.enabled is false, so one owner sets the replica count.
    count: int | None = Field(None, ge=0, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must not exceed replicas.max ({self.max})")
        return self


class Autoscaling(_Model):
    enabled: bool = True
    target_connections_per_pod: int = Field(5000, ge=1)
    scale_down_stabilization_seconds: int = Field(300, ge=0, le=3600)
    tolerance: float = Field(0.1, ge=0.0, lt=1.0)


class ManagedRedis(_Model):
    image: str = Field("redis:7.2", min_length=1)
    resources: dict[str, Any] = Field(default_factory=dict)


class ExternalRedis(_Model):
    url_secret_ref: SecretKeyRef
    cluster: bool = False  # a Redis Cluster: sharded pub/sub (MESSAGING_REDIS_CLUSTER)


class Redis(_Model):
    managed: ManagedRedis | None = None
    external: ExternalRedis | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.managed is None) == (self.external is None):
            raise ValueError("redis needs exactly one of managed or external")
        return self


class Postgres(_Model):
    dsn_secret_ref: SecretKeyRef
    # A streaming replica for history and conversation lists (MESSAGING_DATABASE_READ_URL).
    read_dsn_secret_ref: SecretKeyRef | None = None


JwtAlgorithm = Literal["HS256", "RS256", "ES256"]


class Auth(_Model):
    jwt_secret_ref: SecretKeyRef | None = None
    algorithms: list[JwtAlgorithm] = Field(
        default_factory=lambda: list[JwtAlgorithm](["HS256"]), min_length=1
    )
    public_key_secret_ref: SecretKeyRef | None = None
    issuer: str = ""
    audience: str = ""

    @model_validator(mode="after")
    def _keys_for_algorithms(self) -> Self:
        if "HS256" in self.algorithms and self.jwt_secret_ref is None:
            raise ValueError("auth.jwtSecretRef is required when HS256 is allowed")
        if {"RS256", "ES256"} & set(self.algorithms) and self.public_key_secret_ref is None:
            raise ValueError("auth.publicKeySecretRef is required when RS256 or ES256 is allowed")
        return self


class ConnectionsService(_Model):
    address: str = Field(min_length=1)


class ServiceOptions(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_timeout_seconds: int = Field(10800, ge=1, le=86400)
    annotations: dict[str, str] = Field(default_factory=dict)
    http_port: int = Field(HTTP_CONTAINER_PORT, ge=1, le=65535)
    grpc_port: int = Field(GRPC_CONTAINER_PORT, ge=1, le=65535)
    metrics_port: int = Field(9090, ge=1, le=65535)


class PodDisruptionBudget(_Model):
    enabled: bool = True
    max_unavailable: int | str = 1


class TopologySpread(_Model):
    enabled: bool = True
    max_skew: int = Field(1, ge=1)
    when_unsatisfiable: Literal["ScheduleAnyway", "DoNotSchedule"] = "ScheduleAnyway"
    topology_keys: list[str] = Field(
        default_factory=lambda: ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    )


class Drain(_Model):
    window_seconds: int = Field(10, ge=0, le=3600)
    shutdown_deadline_seconds: int = Field(25, ge=1, le=3600)
    pre_stop_sleep_seconds: int = Field(5, ge=0, le=300)

    @model_validator(mode="after")
    def _deadline_after_window(self) -> Self:
        if self.shutdown_deadline_seconds <= self.window_seconds:
            raise ValueError("drain.shutdownDeadlineSeconds must exceed drain.windowSeconds")
        return self

    @property
    def termination_grace_period_seconds(self) -> int:
        """Long enough for endpoints to update, the drain to finish, and a margin to exit."""
        return self.pre_stop_sleep_seconds + self.shutdown_deadline_seconds + 5


class Migrations(_Model):
    backoff_limit: int = Field(1, ge=0, le=10)
    active_deadline_seconds: int = Field(600, ge=10, le=86400)


Transport = Literal["polling", "websocket"]


class SocketIO(_Model):
    transports: list[Transport] = Field(
        default_factory=lambda: list[Transport](["polling", "websocket"]), min_length=1
    )


class Cors(_Model):
    allowed_origins: list[str] = Field(default_factory=list, max_length=100)


WebhookEvent = Literal[
    "message.created",
    "message.updated",
    "message.deleted",
    "message.read",
    "conversation.created",
    "conversation.updated",
    "message.reported",
    "notification.requested",
]


class Webhook(_Model):
    url: str = Field(pattern=r"^https?://[^\s/]+")
    secret_ref: SecretKeyRef
    events: list[WebhookEvent] = Field(default_factory=list)  # empty: every type


class S3Credentials(_Model):
    name: str = Field(min_length=1)
    access_key_id_key: str = Field("accessKeyId", min_length=1)
    secret_access_key_key: str = Field("secretAccessKey", min_length=1)


class S3(_Model):
    endpoint: str = ""  # empty: the AWS endpoint of the region
    bucket: str = Field(min_length=1)
    region: str = ""
    credentials_secret_ref: S3Credentials


class Attachments(_Model):
    s3: S3 | None = None  # absent: attachments are off


class Tls(_Model):
    """gRPC TLS from a kubernetes.io/tls Secret (tls.crt, tls.key; ca.crt for client certs)."""

    secret_name: str = Field(min_length=1)
    client_auth: bool = False  # mutual TLS: clients must present a certificate signed by ca.crt


class Override(_Model):
    # A strategic-merge patch for the messaging pods' template ({metadata, spec}).
    pod_template: dict[str, Any] | None = None


class ClusterSpec(_Model):
    image: str = Field(min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    replicas: Replicas = Field(default_factory=Replicas)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    redis: Redis = Field(default_factory=lambda: Redis(managed=ManagedRedis()))
    postgres: Postgres
    auth: Auth
    connections_service: ConnectionsService
    resources: dict[str, Any] = Field(default_factory=dict)
    service: ServiceOptions = Field(default_factory=ServiceOptions)
    pod_disruption_budget: PodDisruptionBudget = Field(default_factory=PodDisruptionBudget)
    topology_spread: TopologySpread = Field(default_factory=TopologySpread)
    drain: Drain = Field(default_factory=Drain)
    migrations: Migrations = Field(default_factory=Migrations)
    socketio: SocketIO = Field(default_factory=SocketIO)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    cors: Cors = Field(default_factory=Cors)
    webhooks: list[Webhook] = Field(default_factory=list, max_length=20)
    attachments: Attachments = Field(default_factory=Attachments)
    tls: Tls | None = None
    override: Override = Field(default_factory=Override)
    paused: bool = False


def parse_spec(raw: object) -> ClusterSpec:
    """Validate a MessagingCluster's spec; every problem becomes one readable InvalidSpecError."""
    try:
        return ClusterSpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}" for err in e.errors()
        )
        raise InvalidSpecError(f"invalid spec: {problems}") from e


def check_name(name: str) -> None:
    """Child names are built from the cluster's name, so it must leave room for their suffixes."""
    if len(name) > MAX_NAME_LENGTH or not _DNS_1035.match(name):
        raise InvalidSpecError(
            f"metadata.name {name!r} must be a DNS-1035 label "
            f"of at most {MAX_NAME_LENGTH} characters"
        )
