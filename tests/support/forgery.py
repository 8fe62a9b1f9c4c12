"""Page tokens as an attacker would make them: the unsigned format anyone can compute
(base64url of JSON with the query's digest), holding what the server never wrote."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import grpc
import pytest

from tests.support.rpc import refusal


def scope(query: Any) -> str:
    """The query digest page tokens carry (services.shared.paging's, recomputed)."""
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


def unsigned(after: Any, query: Any) -> str:
    raw = json.dumps({"a": after, "q": scope(query)}).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged_tokens(query: Any, time_ordered: bool) -> dict[str, str]:
    """Forged tokens by what they hold, for a list whose token carries `query`."""
    deep = "[" * 5000 + "]" * 5000
    when = "2026-01-01T00:00:00+00:00"
    return {
        "a non-integer position": unsigned(["abc"] if not time_ordered else [when, ["x"]], query),
        "a position of 10^30": unsigned([10**30] if not time_ordered else [10**30, "x"], query),
        "an eastern arabic digit": unsigned(["٣"] if not time_ordered else ["٣", "x"], query),
        "nested 5000 deep": base64.urlsafe_b64encode(
            ('{"a": ' + deep + ', "q": "' + scope(query) + '"}').encode()).decode(),
        "an honest-looking key": unsigned([1] if not time_ordered else [when, "lead-1"], query),
        "garbage": "garbage!",
    }


async def assert_every_forgery_refused(call: Any, make: Any, query: Any, *,
                                       time_ordered: bool, genuine: str = "") -> None:
    """`call(make(page_token))` is INVALID_ARGUMENT / INVALID_PAGE_TOKEN for each forgery,
    and for a genuine token with one character changed."""
    tokens = forged_tokens(query, time_ordered)
    if genuine:
        payload, _, signature = genuine.partition(".")
        middle = len(payload) // 2  # not the last character, whose low bits are padding
        altered = payload[:middle] + ("A" if payload[middle] != "A" else "B") + payload[middle + 1:]
        tokens["a genuine token altered"] = f"{altered}.{signature}"
        tokens["a genuine payload, unsigned"] = payload
    for what, token in tokens.items():
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(make(token))
        refused = refusal(failed.value)
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"), (what, refused)
        assert set(refused.fields) == {"page_token"}, what
