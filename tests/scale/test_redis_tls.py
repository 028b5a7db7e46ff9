"""Redis is configured by URL: a password and TLS (rediss://) work like a plain connection."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.replicas import Cluster, devices_on, logs_on_failure
from tests.support.servers import free_port, wait_for_port
from tests.support.service import unique

PASSWORD = "s3cret-redis-password"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis that only speaks TLS and wants a password; yields its rediss:// URL."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary is not None
    process = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port)
        yield f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={cert}&ssl_cert_reqs=required"
    finally:
        process.terminate()
        process.wait(10)


async def test_replicas_talk_through_a_tls_redis_with_a_password(
    cluster: Cluster, tls_redis: str
) -> None:
    a, b = await cluster.start(2, redis_url=tls_redis)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        async with devices_on(cluster, (alice, a), (bob, b)) as [a1, b1]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            sent = await a1.ok("sendMessage", {"conversationId": conversation, "content": "tls"})
            assert await b1.next("newMessage") == sent
            presence = await a1.ok("getPresence", {"userIds": [bob]})
            assert presence["presence"][bob]["online"] is True
        assert await b.metric("messaging_backplane_listener_up") == 1


async def test_a_wrong_redis_password_leaves_the_replica_unready(
    cluster: Cluster, tls_redis: str
) -> None:
    wrong = tls_redis.replace(PASSWORD, "not-the-password")
    replica = cluster.add(redis_url=wrong)
    replica.start()
    with pytest.raises(TimeoutError):
        await replica.wait_ready(timeout=4)
    status, body = await replica.readyz()
    assert status == 503
    assert any("redis" in problem for problem in body["problems"]), body
