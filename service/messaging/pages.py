"""Pages of a list and their tokens: the one place a page's size and its cursor are decided.

A paged read fetches ``limit + 1`` rows; one more than the limit means another page follows,
and its token is the signed position (time, id) of the page's last row (``cursor.py`` signs it,
bound to the list's kind and scope, so a token of one list is refused by another).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from messaging.cursor import decode_page_token, encode_page_token
from messaging.errors import ValidationFailed

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Page tokens for one paged list (a conversation's history, a user's conversations)."""

    key: bytes
    kind: str
    scope: str

    def decode(self, token: str) -> tuple[datetime, uuid.UUID] | None:
        if not token:
            return None
        return decode_page_token(self.key, token, kind=self.kind, scope=self.scope)

    def page(
        self, rows: list[T], limit: int, position: Callable[[T], tuple[datetime, uuid.UUID]]
    ) -> Page[T]:
        """``rows`` were fetched with ``limit + 1``: one more means another page follows."""
        items, token = rows[:limit], ""
        if len(rows) > limit:
            at, row_id = position(items[-1])
            token = encode_page_token(
                self.key, kind=self.kind, scope=self.scope, at=at, row_id=row_id
            )
        return Page(items, token)


def page_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= requested <= MAX_PAGE_SIZE:
        raise ValidationFailed(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    return requested
