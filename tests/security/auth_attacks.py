"""Shared by the auth attack suites: hand-made JWTs and real service processes to aim them at.

Tokens are built byte by byte (not with pyjwt's encoder, which refuses most of the oddities an
attacker sends); replicas are real `messaging serve` processes in production mode on PostgreSQL.
"""

from __future__ import annotations

import base64
import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from messaging.dev_connections import ConnectionGraph, start_connections_server
from tests.support.replicas import Cluster, Replica
from tests.support.servers import RedisControl

ISSUER = "https://idp.example"
AUDIENCE = "messaging"
CURSOR_SECRET = "cursor-secret-for-the-attack-suite-0123456789"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for the strict replicas; ``None`` removes a claim."""
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": f"user-{uuid.uuid4().hex[:10]}",
        "iat": now,
        "exp": now + 600,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def signing_input(header: Any, payload: Any) -> bytes:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}".encode()


def rs256(key: rsa.RSAPrivateKey, payload: Any, header: Any = None) -> str:
    head = {"alg": "RS256", "typ": "JWT"} if header is None else header
    data = signing_input(head, payload)
    signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return f"{data.decode()}.{b64(signature)}"


def es256(key: ec.EllipticCurvePrivateKey, payload: Any, header: Any = None) -> str:
    head = {"alg": "ES256", "typ": "JWT"} if header is None else header
    data = signing_input(head, payload)
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return f"{data.decode()}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@contextlib.asynccontextmanager
async def deployment(
    database_url: str, redis: RedisControl, graph: ConnectionGraph | None = None
) -> AsyncIterator[Cluster]:
    """A Cluster for one test module (the ``cluster`` fixture lives one test)."""
    redis.start()
    graph = graph or ConnectionGraph(all_connected=True)
    server, port = await start_connections_server(graph)
    cluster = Cluster(
        database_url=database_url,
        redis=redis,
        connections_address=f"127.0.0.1:{port}",
        graph=graph,
        workdir=Path(tempfile.mkdtemp(prefix="messaging-security-")),
    )
    try:
        yield cluster
    finally:
        cluster.stop()
        await server.stop(0)


def strict_settings(public_key: str, **more: str) -> dict[str, str]:
    """RS256 only, with issuer and audience: the production setup of the issue's attacks."""
    return {
        "jwt_algorithms": '["RS256"]',
        "jwt_public_key": public_key,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "cursor_secret": CURSOR_SECRET,
        **more,
    }


async def start(cluster: Cluster, **settings: str) -> Replica:
    (replica,) = await cluster.start(1, **settings)
    return replica
