"""A verified token is remembered, never trusted past its expiry or for longer than a minute."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from messaging import auth
from messaging.auth import TokenVerifier, mint_token
from messaging.errors import Unauthorized
from messaging.settings import Settings

SETTINGS = Settings(jwt_secret="a-test-secret-of-at-least-32-bytes!!")


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token pyjwt is asked to check the signature of."""
    seen: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return seen


async def test_a_repeated_token_is_not_decoded_again(decodes: list[str]) -> None:
    verifier = TokenVerifier(SETTINGS)
    token = mint_token(SETTINGS, "alice")
    first = await verifier.verify(token)
    again = await verifier.verify(token)
    assert first == again and first.user_id == "alice"
    assert decodes == [token]


async def test_a_remembered_token_is_refused_once_it_expires(
    decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(SETTINGS)
    token = mint_token(SETTINGS, "alice", ttl_seconds=60)
    identity = await verifier.verify(token)
    later = identity.expires_at + verifier.leeway_seconds + 1
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Unauthorized, match="token expired"):
        await verifier.verify(token)
    await verifier.verify(token)  # forgotten: pyjwt (on the real clock) checks it again
    assert decodes == [token, token]


async def test_a_verification_is_reused_for_a_minute_at_most(
    decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(SETTINGS)
    token = mint_token(SETTINGS, "alice")
    now = time.monotonic()
    await verifier.verify(token)
    monkeypatch.setattr(time, "monotonic", lambda: now + auth.VERIFIED_CACHE_SECONDS + 1)
    await verifier.verify(token)
    assert decodes == [token, token]


async def test_refused_tokens_are_not_remembered_and_the_cache_is_bounded(
    decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "VERIFIED_CACHE_SIZE", 3)
    verifier = TokenVerifier(SETTINGS)
    forged = mint_token(Settings(jwt_secret="another-secret-of-at-least-32-bytes!"), "mallory")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await verifier.verify(forged)
    tokens = [mint_token(SETTINGS, f"user-{i}") for i in range(5)]
    for token in tokens:
        await verifier.verify(token)
    await verifier.verify(tokens[0])  # evicted: decoded again
    assert decodes == [forged, forged, *tokens, tokens[0]]
