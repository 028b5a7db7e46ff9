"""The Socket.IO handshake: a valid JWT gets in, every kind of bad token gets UNAUTHORIZED."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from messaging.dev_connections import ConnectionGraph
from tests.support.service import (
    JWT_SECRET,
    Device,
    RunningService,
    running_service,
    service_settings,
    unique,
)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": unique(), "iat": now, "exp": now + 300}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _hs256(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


async def _refusal(svc: RunningService, **connect: Any) -> Any:
    device = Device(svc.url, token=None)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await device.connect(**connect)
    return device.connect_error


async def test_a_valid_token_in_the_auth_payload_connects(svc: RunningService) -> None:
    device = Device(svc.url, svc.token(unique()))
    await device.connect()
    assert device.client.connected
    await device.disconnect()


async def test_a_bearer_authorization_header_is_accepted_too(svc: RunningService) -> None:
    device = Device(svc.url, token=None)
    await device.connect(auth={}, headers={"Authorization": f"Bearer {svc.token(unique())}"})
    assert device.client.connected
    await device.disconnect()


async def test_long_polling_transport_works_as_well_as_websocket(svc: RunningService) -> None:
    """Engine.IO v4 long-polling, spoken on the wire: open, connect with auth, call, get the ack.

    (python-engineio's own clients hold a poll open for a ping interval after disconnecting,
    which would make this test take 30 s; the protocol is small enough to speak directly.)
    """
    async with httpx.AsyncClient(base_url=svc.url, timeout=5) as http:
        opened = (await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})).text
        assert opened.startswith("0")
        params = {"EIO": "4", "transport": "polling", "sid": json.loads(opened[1:])["sid"]}
        auth = json.dumps({"token": svc.token(unique())})
        assert (await http.post("/socket.io/", params=params, content=f"40{auth}")).text == "OK"
        connected = (await http.get("/socket.io/", params=params)).text
        assert connected.startswith("40{"), connected
        call = '421["syncMessages",{}]'
        assert (await http.post("/socket.io/", params=params, content=call)).text == "OK"
        ack = (await http.get("/socket.io/", params=params)).text
        assert ack.startswith("431")
        [reply] = json.loads(ack[3:])
        assert reply["ok"] is True
        assert (reply["data"]["messages"], reply["data"]["hasMore"]) == ([], False)
        await http.post("/socket.io/", params=params, content="1")  # Engine.IO close


def _none_alg(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]


def _rs256(claims: dict[str, Any]) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256")


BAD_TOKENS: dict[str, Callable[[], object]] = {
    "missing": lambda: None,
    "empty": lambda: "",
    "not a jwt": lambda: "definitely-not-a-jwt",
    "not a string": lambda: 12345,
    "expired": lambda: _hs256(_claims(exp=int(time.time()) - 3600)),
    "not valid yet (nbf)": lambda: _hs256(_claims(nbf=int(time.time()) + 3600)),
    "wrong secret": lambda: _hs256(_claims(), secret="another-secret-that-is-long-enough-000"),
    "alg none": lambda: _none_alg(_claims()),
    "unconfigured algorithm (RS256)": lambda: _rs256(_claims()),
    "no sub": lambda: _hs256(_claims(sub=None)),
    "no exp": lambda: _hs256(_claims(exp=None)),
    "sub not a string": lambda: _hs256(_claims(sub=42)),
    "sub too long": lambda: _hs256(_claims(sub="u" * 129)),
    "tampered payload": lambda: _tamper(_hs256(_claims())),
}


def base64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _tamper(token: str) -> str:
    header, _, signature = token.split(".")
    other = _hs256(_claims(sub="admin")).split(".")[1]
    return ".".join((header, other, signature))


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_a_bad_token_is_refused_with_unauthorized(svc: RunningService, kind: str) -> None:
    token = BAD_TOKENS[kind]()
    error = await _refusal(svc, auth={"token": token})
    assert error["data"]["code"] == "UNAUTHORIZED"
    assert error["data"]["message"]
    assert "Traceback" not in str(error)


async def test_a_non_object_auth_payload_is_refused(svc: RunningService) -> None:
    error = await _refusal(svc, auth="a-string-instead-of-an-object")
    assert error["data"]["code"] == "UNAUTHORIZED"


async def test_clock_skew_within_the_leeway_is_tolerated(svc: RunningService) -> None:
    token = _hs256(_claims(nbf=int(time.time()) + 5))  # leeway defaults to 30s
    device = Device(svc.url, token)
    await device.connect()
    await device.disconnect()


# --- issuer and audience, and public-key algorithms -----------------------------------------


def _pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest_asyncio.fixture(scope="module")
async def strict_svc(sqlite_database: str) -> AsyncIterator[RunningService]:
    """A service that checks iss and aud, and accepts RS256 and ES256 but not HS256."""
    settings = service_settings(
        sqlite_database,
        jwt_algorithms=["RS256", "ES256"],
        jwt_public_key=_pem_public(RSA_KEY),
        jwt_issuer="https://auth.example",
        jwt_audience="messaging",
    )
    async with running_service(settings, ConnectionGraph(), "sqlite") as running:
        yield running


async def test_rs256_with_the_right_issuer_and_audience_connects(
    strict_svc: RunningService,
) -> None:
    claims = _claims(iss="https://auth.example", aud="messaging")
    device = Device(strict_svc.url, jwt.encode(claims, RSA_KEY, algorithm="RS256"))
    await device.connect()
    await device.disconnect()


@pytest.mark.parametrize(
    ("what", "claims"),
    [
        ("wrong issuer", {"iss": "https://evil.example", "aud": "messaging"}),
        ("wrong audience", {"iss": "https://auth.example", "aud": "billing"}),
        ("no issuer", {"aud": "messaging"}),
        ("no audience", {"iss": "https://auth.example"}),
    ],
)
async def test_issuer_and_audience_are_checked_when_configured(
    strict_svc: RunningService, what: str, claims: dict[str, Any]
) -> None:
    token = jwt.encode(_claims(**claims), RSA_KEY, algorithm="RS256")
    error = await _refusal(strict_svc, auth={"token": token})
    assert error["data"]["code"] == "UNAUTHORIZED", what


async def test_an_hs256_token_signed_with_the_public_key_is_refused(
    strict_svc: RunningService,
) -> None:
    """The algorithm-confusion attack: HS256 keyed with the (public) RSA key."""
    claims = _claims(iss="https://auth.example", aud="messaging")
    signing_input = b".".join(
        base64url(json.dumps(part).encode()) for part in ({"alg": "HS256", "typ": "JWT"}, claims)
    )
    mac = hmac.new(_pem_public(RSA_KEY).encode(), signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + base64url(mac)).decode()
    error = await _refusal(strict_svc, auth={"token": token})
    assert error["data"]["code"] == "UNAUTHORIZED"


async def test_es256_is_accepted_when_configured_with_its_public_key(
    sqlite_database: str,
) -> None:
    settings = service_settings(
        sqlite_database, jwt_algorithms=["ES256"], jwt_public_key=_pem_public(EC_KEY)
    )
    async with running_service(settings, ConnectionGraph(), "sqlite") as es:
        device = Device(es.url, jwt.encode(_claims(), EC_KEY, algorithm="ES256"))
        await device.connect()
        await device.disconnect()
        error = await _refusal(es, auth={"token": _hs256(_claims())})
        assert error["data"]["code"] == "UNAUTHORIZED"
