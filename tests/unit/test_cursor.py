"""Page tokens are opaque, stable positions that a client cannot forge or move elsewhere."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messaging.cursor import (
    decode_page_token,
    decode_sync_token,
    encode_page_token,
    encode_sync_token,
)
from messaging.errors import ValidationFailed

KEY = b"k" * 32
AT = datetime(2026, 11, 26, 12, 30, 1, 123456, tzinfo=UTC)


@given(
    at=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    row_id=st.uuids(),
)
def test_a_token_decodes_to_exactly_the_position_it_encodes(
    at: datetime, row_id: uuid.UUID
) -> None:
    token = encode_page_token(KEY, kind="history", scope="c1", at=at, row_id=row_id)
    assert decode_page_token(KEY, token, kind="history", scope="c1") == (at, row_id)


def test_a_token_is_url_safe_text() -> None:
    token = encode_page_token(KEY, kind="history", scope="c1", at=AT, row_id=uuid.uuid4())
    assert token.isascii()
    assert not set(token) & set("+/=")


def test_every_single_byte_change_is_refused() -> None:
    token = encode_page_token(KEY, kind="history", scope="c1", at=AT, row_id=uuid.uuid4())
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for index in range(len(raw)):
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(tampered)).rstrip(b"=").decode()
        with pytest.raises(ValidationFailed, match="invalid page token"):
            decode_page_token(KEY, forged, kind="history", scope="c1")


@pytest.mark.parametrize(
    ("kind", "scope", "key"),
    [
        ("history", "another-conversation", KEY),
        ("conversations", "c1", KEY),
        ("history", "c1", b"another key, another deployment"),
    ],
)
def test_a_token_only_works_where_it_was_minted(kind: str, scope: str, key: bytes) -> None:
    token = encode_page_token(KEY, kind="history", scope="c1", at=AT, row_id=uuid.uuid4())
    with pytest.raises(ValidationFailed):
        decode_page_token(key, token, kind=kind, scope=scope)


@pytest.mark.parametrize("garbage", ["", "!!!", "a", "AAAA", "not a token at all", "x" * 500])
def test_garbage_is_refused_not_crashed_on(garbage: str) -> None:
    with pytest.raises(ValidationFailed):
        decode_page_token(KEY, garbage, kind="history", scope="c1")


@pytest.mark.parametrize("micros", [2**63 - 1, -(2**63), 10**18, -1])
def test_a_validly_signed_token_with_an_impossible_position_is_refused(micros: int) -> None:
    """Even with the key (leaked, or the public key of old), a position no row can have is a
    VALIDATION_FAILED, never an overflow deeper down (it used to be INTERNAL)."""
    body = struct.pack(">Bq16s", 1, micros, uuid.uuid4().bytes)
    mac = hmac.new(KEY, b"history\x00c1\x00" + body, hashlib.sha256).digest()[:16]
    forged = base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()
    with pytest.raises(ValidationFailed, match="invalid page token"):
        decode_page_token(KEY, forged, kind="history", scope="c1")


@given(key=st.binary(max_size=200), scope=st.text(max_size=80), position=st.integers(0, 2**63))
def test_a_sync_token_carries_the_hmac_sha256_of_its_kind_scope_and_body(
    key: bytes, scope: str, position: int
) -> None:
    # The MAC is computed from key states kept per key (cursor._keyed); it must stay the RFC 2104
    # HMAC-SHA256 that hmac.new gives, for keys shorter and longer than a block.
    token = encode_sync_token(key, user_id=scope, position=position)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    body = struct.pack(">BQ", 1, position)
    expected = hmac.new(key, b"sync\x00" + scope.encode() + b"\x00" + body, hashlib.sha256)
    assert raw == body + expected.digest()[:16]
    assert decode_sync_token(key, token, user_id=scope) == position
