"""JWT verification shared by the Socket.IO handshake, ``reauthenticate`` and the gRPC interceptor.

Only the algorithms named in settings are accepted, each with its own key: an HS256 token is never
checked against a public key (the classic algorithm-confusion attack), and ``alg: none`` is refused
because it is never in the list. RS256/ES256 keys come either from one configured public key or
from the identity provider's JWKS document (``MESSAGING_JWT_JWKS_URL``), picked by the token's
``kid`` so the provider can rotate keys without a restart.

Everything about a token is attacker-controlled, including the types inside its header and claims
(an ``alg`` that is a list, an ``exp`` that is a string): every such oddity is an ``Unauthorized``
with a short reason, never a ``TypeError`` escaping into the Socket.IO or gRPC machinery.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from messaging.errors import Unauthorized, Unavailable
from messaging.settings import Settings

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192
MAX_USER_ID_LENGTH = 128
MAX_KID_LENGTH = 256
MAX_JWKS_BYTES = 1_048_576
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")
MAX_EXPIRY = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last instant a datetime can hold


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for, and until when (``exp``, seconds since the epoch)."""

    user_id: str
    expires_at: float


class JwksKeys:
    """The identity provider's signing keys, fetched from its JWKS URL and cached by ``kid``.

    The document is fetched at start-up, again when it is older than ``cache_seconds``, and when
    a token names a ``kid`` not in the cache (how a rotation shows up), but never more often than
    once per ``min_refresh_seconds``: a stream of tokens with made-up ``kid`` values cannot turn
    the service into a load generator against the provider. Fetching is asynchronous and shared by
    concurrent callers. When the document cannot be fetched the keys already known keep working
    and every other ``kid`` is refused: the check fails closed.
    """

    def __init__(
        self,
        url: str,
        *,
        algorithms: Sequence[str],
        cache_seconds: float,
        min_refresh_seconds: float,
        timeout_seconds: float,
    ) -> None:
        self._url = url
        self._algorithms = [a for a in algorithms if a in PUBLIC_KEY_ALGORITHMS]
        self._cache_seconds = cache_seconds
        self._min_refresh = min_refresh_seconds
        self._timeout = timeout_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at = -math.inf  # last attempt, successful or not
        self._refreshing: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"Accept": "application/json"},
        )
        await self._refresh_once()

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def publishes(self, kid: str) -> bool:
        """Whether the last document fetched still has the key ``kid`` (not rotated out)."""
        return kid in self._keys

    async def key(self, kid: str, alg: str) -> Any:
        now = time.monotonic()
        stale = self._fetched_at is None or now - self._fetched_at > self._cache_seconds
        if now - self._tried_at >= self._min_refresh:
            if kid not in self._keys:
                await self._refresh_once()
            elif stale:
                self._start_refresh()  # the key is known: use it, refresh in the background
        found = self._keys.get(kid)
        if found is None:
            if self._fetched_at is None:
                raise Unavailable("the identity provider's signing keys are unavailable")
            raise Unauthorized("token signed with an unknown key")
        if found.algorithm_name != alg:
            raise Unauthorized(f"key {kid!r} is not a {alg} key")
        return found.key

    async def _refresh_once(self) -> None:
        """One fetch at a time; concurrent callers wait for the same one."""
        await asyncio.shield(self._start_refresh())

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._refreshing is None or self._refreshing.done():
            self._tried_at = time.monotonic()
            self._refreshing = asyncio.create_task(self._refresh(), name="jwks-refresh")
        return self._refreshing

    async def _refresh(self) -> None:
        if self._session is None:
            raise RuntimeError("JwksKeys.start() was not awaited")
        try:
            async with self._session.get(self._url) as reply:
                reply.raise_for_status()
                body = await reply.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
            keys = _parse_jwks(body, self._algorithms)
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
            log.warning(
                "JWKS fetch failed; keeping the keys already known",
                extra={"url": self._url, "error": repr(exc)[:200], "known": len(self._keys)},
            )
            return
        self._keys = keys
        self._fetched_at = time.monotonic()
        log.info("JWKS fetched", extra={"url": self._url, "keys": sorted(keys)})


def _parse_jwks(body: bytes, algorithms: Sequence[str]) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWKS document, by ``kid``; keys we cannot use are skipped."""
    parsed = json.loads(body)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("keys"), list):
        raise ValueError("a JWKS document is an object with a 'keys' list")
    document = jwt.PyJWKSet(parsed["keys"])  # PyJWKSetError when none is usable
    keys: dict[str, jwt.PyJWK] = {}
    for key in document.keys:
        if not isinstance(key.key_id, str) or key.public_key_use not in (None, "sig"):
            continue
        if key.algorithm_name in algorithms:
            keys[key.key_id] = key
    return keys


# A gRPC client sends its token with every call, and decoding it (two base64 passes checked
# character by character, a signature) was an eighth of a history page's CPU. A token verified
# here is remembered for a minute: a token is the same string until it expires, so a repeat only
# needs its expiry checked again, and, for a JWKS key, that the provider still publishes the key
# (a rotated-out key stops working at the refresh that drops it, as without the cache). Only
# verified tokens are kept, and the size bounds the memory (a few MB).
VERIFIED_CACHE_SECONDS = 60.0
VERIFIED_CACHE_SIZE = 4096


class TokenVerifier:
    """Turns a bearer token into the ``Identity`` it was issued for, or raises ``Unauthorized``."""

    def __init__(self, settings: Settings) -> None:
        # token -> (its identity, its JWKS kid, until when the verification is reused: monotonic)
        self._verified: OrderedDict[str, tuple[Identity, str | None, float]] = OrderedDict()
        self._algorithms = list(settings.jwt_algorithms)
        self._keys: dict[str, Any] = {}
        self.jwks: JwksKeys | None = None
        if settings.jwt_jwks_url and any(a in PUBLIC_KEY_ALGORITHMS for a in self._algorithms):
            self.jwks = JwksKeys(
                settings.jwt_jwks_url,
                algorithms=self._algorithms,
                cache_seconds=settings.jwt_jwks_cache_seconds,
                min_refresh_seconds=settings.jwt_jwks_min_refresh_seconds,
                timeout_seconds=settings.jwt_jwks_timeout_seconds,
            )
        for alg in self._algorithms:
            if alg == "HS256":
                self._keys[alg] = settings.jwt_secret.get_secret_value()
            elif self.jwks is None:
                self._keys[alg] = settings.public_key
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None
        self.leeway_seconds = settings.jwt_leeway_seconds

    async def start(self) -> None:
        if self.jwks is not None:
            await self.jwks.start()

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify(self, token: object) -> Identity:
        if not isinstance(token, str) or not token:
            raise Unauthorized("a JWT is required")
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("token too long")
        if (known := self._verified.get(token)) is not None:
            identity, kid, reuse_until = known
            if time.monotonic() < reuse_until and (
                kid is None or self.jwks is None or self.jwks.publishes(kid)
            ):
                if time.time() > identity.expires_at + self.leeway_seconds:
                    del self._verified[token]
                    raise Unauthorized("token expired")
                self._verified.move_to_end(token)
                return identity
            del self._verified[token]
        identity, kid = await self._verify(token)
        self._verified[token] = (identity, kid, time.monotonic() + VERIFIED_CACHE_SECONDS)
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return identity

    async def _verify(self, token: str) -> tuple[Identity, str | None]:
        """The identity, and the JWKS kid of the key that verified it (None: a configured key)."""
        alg, kid = _header(token)
        if alg not in self._algorithms:
            raise Unauthorized(f"algorithm {alg[:16]!r} is not accepted")
        if alg in self._keys:
            return self._decode(token, self._keys[alg], alg), None
        if self.jwks is not None:
            if kid is None:
                raise Unauthorized("token has no 'kid' header")
            return self._decode(token, await self.jwks.key(kid, alg), alg), kid
        # pragma: no cover - settings guarantee a key for every algorithm
        raise Unauthorized(f"algorithm {alg!r} is not accepted")

    def _decode(self, token: str, key: Any, alg: str) -> Identity:
        required = ["sub", "exp"]
        if self._issuer:
            required.append("iss")
        if self._audience:
            required.append("aud")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self.leeway_seconds,
                options={"require": required, "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(_describe(exc)) from exc
        except Exception as exc:
            # pyjwt validates claim types, but a hostile token may still find a corner it does
            # not (a huge number, an odd nesting): whatever it is, the token is refused.
            raise Unauthorized("invalid token") from exc
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > MAX_USER_ID_LENGTH:
            raise Unauthorized("token subject must be a user id of 1..128 characters")
        expires = claims["exp"]
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise Unauthorized("token 'exp' must be a number")
        try:
            expires_at = float(expires)
        except OverflowError as exc:
            raise Unauthorized("token 'exp' out of range") from exc
        if not math.isfinite(expires_at) or expires_at > MAX_EXPIRY:
            raise Unauthorized("token 'exp' out of range")
        return Identity(user_id=subject, expires_at=expires_at)


def _header(token: str) -> tuple[str, str | None]:
    """The header's ``alg`` and ``kid``, insisting that they are short strings."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthorized("malformed token") from exc
    except Exception as exc:
        raise Unauthorized("malformed token") from exc
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise Unauthorized("token header 'alg' must be a string")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH):
        raise Unauthorized("token header 'kid' must be a short string")
    return alg, kid


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
