"""JWT verification shared by the Socket.IO handshake and the gRPC interceptor.

Only the algorithms named in settings are accepted, each with its own key: an HS256 token is never
checked against a public key (the classic algorithm-confusion attack), and ``alg: none`` is refused
because it is never in the list.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from messaging.errors import Unauthorized
from messaging.settings import Settings

MAX_TOKEN_LENGTH = 8192
MAX_USER_ID_LENGTH = 128


class TokenVerifier:
    """Turns a bearer token into the user id it was issued for, or raises ``Unauthorized``."""

    def __init__(self, settings: Settings) -> None:
        self._algorithms = list(settings.jwt_algorithms)
        self._keys: dict[str, Any] = {}
        for alg in self._algorithms:
            if alg == "HS256":
                self._keys[alg] = settings.jwt_secret.get_secret_value()
            else:
                self._keys[alg] = settings.public_key
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None
        self._leeway = settings.jwt_leeway_seconds

    def verify(self, token: object) -> str:
        if not isinstance(token, str) or not token:
            raise Unauthorized("a JWT is required")
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed token") from exc
        alg = header.get("alg")
        if alg not in self._keys:
            raise Unauthorized(f"algorithm {alg!r} is not accepted")
        required = ["sub", "exp"]
        if self._issuer:
            required.append("iss")
        if self._audience:
            required.append("aud")
        try:
            claims = jwt.decode(
                token,
                self._keys[alg],
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": required, "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(_describe(exc)) from exc
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > MAX_USER_ID_LENGTH:
            raise Unauthorized("token subject must be a user id of 1..128 characters")
        return subject


_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not valid yet"),
    (jwt.InvalidIssuerError, "token issuer not accepted"),
    (jwt.InvalidAudienceError, "token audience not accepted"),
    (jwt.InvalidSignatureError, "token signature invalid"),
)


def _describe(exc: jwt.PyJWTError) -> str:
    """A client-facing reason: specific enough to fix a client, never the key or the claims."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim!r} claim"
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"


def bearer_token(header_value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, if it is one."""
    if not header_value:
        return None
    scheme, _, token = header_value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def mint_token(
    settings: Settings,
    user_id: str,
    *,
    ttl_seconds: int = 24 * 3600,
    extra_claims: dict[str, Any] | None = None,
) -> str:
    """An HS256 token for development and tests, signed with the configured secret."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    claims.update(extra_claims or {})
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
