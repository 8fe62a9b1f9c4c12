"""Page sizes, page tokens and pages for every List RPC.

Every list pages the same way, through `page`: the page size, the position the
token continues after (checked: a token is refused rather than trusted), a fetch
of one more item than the page holds, and a token for the next page if there
was one more. `encode` and `decode` are the token codec.

A page size of 0 means the default, and one above the maximum the maximum
(AIP-158): a client asking for more than it may have gets a full page and a
token for the rest. A negative one is INVALID_ARGUMENT.

A page token is opaque to clients and tamper-proof: base64url of JSON holding
the sort key of the last item served and a digest of the query, then `.` and
an HMAC-SHA256 of that under the server's page-token key. Every replica given
the same configuration agrees on the key (CRM_PAGE_TOKEN_SECRET, else derived
from CRM_API_TOKENS; `configure` sets it at start), so a token from one replica
reads on another. A token that was not made here, was altered, or was issued
for other filters, or for another org, is refused INVALID_ARGUMENT /
INVALID_PAGE_TOKEN on `page_token`, before anything in it is read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from services.shared.auth import Caller
from services.shared.errors import InvalidArgument

T = TypeVar("T")
P = TypeVar("P")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_TOKEN_LENGTH = 1024
# What a sort key may hold: integers of a BIGINT, short printable strings.
_MAX_KEY_INTEGER = 2**63 - 1
_MAX_KEY_STRING = 256

_key = secrets.token_bytes(32)  # until `configure`: tokens read only in this process


def configure(key: bytes) -> None:
    """The key every page token is signed with (see the module's docstring)."""
    global _key  # noqa: PLW0603 - one key per process, set once at start
    _key = key


def derived_key(tokens: Any) -> bytes:
    """A key every replica given the same CRM_API_TOKENS ({token: principal}) agrees on."""
    material = "\n".join(sorted(f"{who}:{token}" for token, who in dict(tokens).items()))
    return hashlib.sha256(b"closed-loop page tokens\0" + material.encode()).digest()


def page_size(requested: int) -> int:
    """0 is the default; above the maximum, the maximum (AIP-158); negative is refused."""
    if requested < 0:
        raise InvalidArgument.field("page_size", f"must be 0 (default {DEFAULT_PAGE_SIZE}) "
                                                 "or more")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _scope(query: Any) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(payload: str) -> bytes:
    return hmac.new(_key, b"page-token\0" + payload.encode(), hashlib.sha256).digest()


def _refused(description: str) -> InvalidArgument:
    return InvalidArgument.field("page_token", description, reason="INVALID_PAGE_TOKEN")


def encode(after: list[Any], query: Any) -> str:
    payload = _b64(json.dumps({"a": after, "q": _scope(query)}, separators=(",", ":")).encode())
    return f"{payload}.{_b64(_mac(payload))}"


def decode(token: str, query: Any) -> list[Any] | None:
    """The sort key to continue after, or None for the first page."""
    if not token:
        return None
    payload, _, signature = token.partition(".")
    try:
        genuine = len(token) <= MAX_TOKEN_LENGTH and token.isascii() and hmac.compare_digest(
            _unb64(signature), _mac(payload))
        raw = json.loads(_unb64(payload)) if genuine else None
        after, scope = (raw["a"], raw["q"]) if isinstance(raw, dict) else (None, None)
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        after = scope = None
    if not isinstance(after, list) or not all(_sort_key(v) for v in after):
        raise _not_ours()
    if scope != _scope(query):
        raise _refused("was issued for other filters; ask for the first page without one")
    return after


def _sort_key(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return 0 <= value <= _MAX_KEY_INTEGER
    return isinstance(value, str) and len(value) <= _MAX_KEY_STRING and value.isprintable()


def _not_ours() -> InvalidArgument:
    return _refused("not a page token of this list; ask for the first page without one")


@dataclass(frozen=True)
class PageRequest:
    """A page as a List request asks for it."""

    size: int
    token: str


@dataclass(frozen=True)
class Listing:
    """What every List query carries: the page it asks for, and who asks."""

    page: PageRequest
    caller: Caller


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    # Empty on the last page.
    next_token: str


@dataclass(frozen=True)
class Order(Generic[T, P]):
    """How a list is ordered: the position of an item as its token keeps it, and
    how a token's position is read back (or refused)."""

    position: Callable[[T], list[Any]]
    read: Callable[[list[Any]], P]


def by_time_and_id(key: Callable[[T], tuple[datetime, str]]) -> Order[T, tuple[datetime, str]]:
    """Lists ordered by a time, then an id (as leads, newest first)."""

    def position(item: T) -> list[Any]:
        when, item_id = key(item)
        return [when.isoformat(), item_id]

    def read(after: list[Any]) -> tuple[datetime, str]:
        if len(after) != 2 or not all(isinstance(v, str) for v in after):
            raise _not_ours()
        try:
            when = datetime.fromisoformat(after[0])
        except ValueError:
            raise _not_ours() from None
        if when.tzinfo is None:
            raise _not_ours()
        return when, after[1]

    return Order(position, read)


def by_text_and_id(key: Callable[[T], tuple[str, str]]) -> Order[T, tuple[str, str]]:
    """Lists ordered by a text, then an id (as templates, by name)."""

    def read(after: list[Any]) -> tuple[str, str]:
        if len(after) != 2 or not all(isinstance(v, str) for v in after):
            raise _not_ours()
        return after[0], after[1]

    return Order(lambda item: list(key(item)), read)


def by_sequence(key: Callable[[T], int]) -> Order[T, int]:
    """Lists ordered by a number that only grows (an audit trail's row id)."""

    def read(after: list[Any]) -> int:
        if len(after) != 1 or not isinstance(after[0], int) or isinstance(after[0], bool) \
                or not 0 <= after[0] < 2**63:
            raise _not_ours()
        return after[0]

    return Order(lambda item: [key(item)], read)


async def page(
    request: PageRequest,
    query: Mapping[str, Any],
    order: Order[T, P],
    fetch: Callable[[P | None, int], Awaitable[list[T]]],
    *,
    org: str,
) -> Page[T]:
    """One page of a list: `fetch(after, limit)` gives up to `limit` items after a
    position (None: from the start). `query` names the list and its filters, and
    `org` whose list it is; a token is refused for any other (another org's
    token is one "issued for other filters")."""
    query = {**query, "org": org}
    size = page_size(request.size)
    after = decode(request.token, query)
    found = await fetch(None if after is None else order.read(after), size + 1)
    items = found[:size]
    token = encode(order.position(items[-1]), query) if len(found) > size else ""
    return Page(items, token)
