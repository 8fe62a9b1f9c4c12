"""Page sizes and page tokens for every List RPC.

A page token is opaque to clients: base64url of JSON holding the sort key of
the last item served and a digest of the query, so a token is refused
(INVALID_ARGUMENT on `page_token`) if the filters changed between pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime
from typing import Any

from services.shared.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def page_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= requested <= MAX_PAGE_SIZE:
        raise InvalidArgument.field("page_size", f"must be 0 (default {DEFAULT_PAGE_SIZE}) "
                                                 f"or 1 to {MAX_PAGE_SIZE}")
    return requested


def _scope(query: Any) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode(after: list[Any], query: Any) -> str:
    raw = json.dumps({"a": after, "q": _scope(query)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(token: str, query: Any) -> list[Any] | None:
    """The sort key to continue after, or None for the first page."""
    if not token:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after, scope = raw["a"], raw["q"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", "not a page token of this list") from None
    if scope != _scope(query) or not isinstance(after, list):
        raise InvalidArgument.field("page_token", "was issued for a different query")
    if not all(isinstance(v, int) or (isinstance(v, str) and v.isprintable()) for v in after):
        raise InvalidArgument.field("page_token", "not a page token of this list")
    return after


def encode_time_and_id(when: datetime, item_id: str, query: Any) -> str:
    """A token continuing after the item at (`when`, `item_id`) of a time-ordered list."""
    return encode([when.isoformat(), item_id], query)


def decode_time_and_id(token: str, query: Any) -> tuple[datetime, str] | None:
    """The (time, id) a time-ordered list continues after, or None for the first page."""
    after = decode(token, query)
    if after is None:
        return None
    try:
        when, item_id = after
        return datetime.fromisoformat(str(when)), str(item_id)
    except (TypeError, ValueError):
        raise InvalidArgument.field("page_token", "not a page token of this list") from None
