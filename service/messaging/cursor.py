"""Opaque, signed tokens: page tokens for keyset pagination, and sync tokens (log positions).

A token is the (timestamp, id) of the last row a page returned, so the next page starts strictly
after it whatever was inserted meanwhile (an offset would shift). It is signed with a key every
replica shares and bound to what it pages over (a conversation, or the caller for their
conversation list): a token edited by a client, or replayed against another conversation, is
refused as ``VALIDATION_FAILED`` rather than silently paging somewhere else.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import struct
import uuid
from datetime import UTC, datetime, timedelta

from messaging.errors import ValidationFailed

_VERSION = 1
_BODY = struct.Struct(">Bq16s")  # version, microseconds since the epoch, row id
_MAC_BYTES = 16
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Positions a real row can have: a token that decodes to anything else was not minted here (or
# was minted with a leaked key) and must not reach the database as an out-of-range timestamp.
_EARLIEST = _EPOCH
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256's inner and outer hashes with the key already absorbed (RFC 2104).

    Every message sent mints a sync token per participant; ``hmac.new`` pads and hashes the key
    again for each one. A replica has one or two keys, so their padded states are kept and
    copied: the same MAC for a third of the work.
    """
    block = 64  # SHA-256's block size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\x00")
    inner = hashlib.sha256(key.translate(_IPAD))
    outer = hashlib.sha256(key.translate(_OPAD))
    return inner, outer


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _mac(key: bytes, kind: str, scope: str, body: bytes) -> bytes:
    inner_start, outer_start = _keyed(key)
    inner = inner_start.copy()
    inner.update(kind.encode() + b"\x00" + scope.encode() + b"\x00" + body)
    outer = outer_start.copy()
    outer.update(inner.digest())
    return outer.digest()[:_MAC_BYTES]


def _seal(key: bytes, kind: str, scope: str, body: bytes) -> str:
    token = body + _mac(key, kind, scope, body)
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode()


def _open(
    key: bytes, token: str, *, kind: str, scope: str, layout: struct.Struct, what: str
) -> bytes:
    """The signed body of a token of ``layout``, its version checked; ``ValidationFailed`` (naming
    ``what``) for anything not minted here for this kind and scope."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValidationFailed(f"invalid {what}") from exc
    if len(raw) != layout.size + _MAC_BYTES:
        raise ValidationFailed(f"invalid {what}")
    body, mac = raw[: layout.size], raw[layout.size :]
    if not hmac.compare_digest(mac, _mac(key, kind, scope, body)):
        raise ValidationFailed(f"invalid {what}")
    if body[0] != _VERSION:  # every layout starts with its version byte
        raise ValidationFailed(f"invalid {what}")
    return body


def encode_page_token(key: bytes, *, kind: str, scope: str, at: datetime, row_id: uuid.UUID) -> str:
    micros = (at - _EPOCH) // timedelta(microseconds=1)
    return _seal(key, kind, scope, _BODY.pack(_VERSION, micros, row_id.bytes))


def decode_page_token(
    key: bytes, token: str, *, kind: str, scope: str
) -> tuple[datetime, uuid.UUID]:
    """The position a token points after; ``ValidationFailed`` for anything not minted here."""
    body = _open(key, token, kind=kind, scope=scope, layout=_BODY, what="page token")
    _, micros, id_bytes = _BODY.unpack(body)
    try:
        at = _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise ValidationFailed("invalid page token") from None
    if not _EARLIEST <= at < _LATEST:
        raise ValidationFailed("invalid page token")
    return at, uuid.UUID(bytes=id_bytes)


_SYNC_BODY = struct.Struct(">BQ")  # version, position in the user's change log


def encode_sync_token(key: bytes, *, user_id: str, position: int) -> str:
    """A position in ``user_id``'s change log, signed and bound to that user."""
    return _seal(key, "sync", user_id, _SYNC_BODY.pack(_VERSION, position))


def decode_sync_token(key: bytes, token: str, *, user_id: str) -> int:
    """The log position a sync token stands for; ``ValidationFailed`` for anything not minted here
    for this user (a token is only meaningful in its own user's log)."""
    body = _open(key, token, kind="sync", scope=user_id, layout=_SYNC_BODY, what="sync token")
    _, position = _SYNC_BODY.unpack(body)
    return int(position)
