"""What a client of the gateway knows from /openapi.json that JSON Schema cannot check.

Loaded by `schemathesis run` (SCHEMATHESIS_HOOKS=tests.e2e.schemathesis_hooks) in
tests/e2e/test_schemathesis.py. Nothing here turns a check off or reads an
answer to excuse it: it makes the generated requests follow the rules the
document states in words, as any client of the API must.

- The document's own formats (gateway.openapi.FORMATS): "phone" is a number that
  can exist, "sms-body" fits one SMS segment, "template-body" names only known
  placeholders, "page-token" is a token received (below).
- Idempotency-Key: "one key per logical call". Every request is a new logical
  call here, so a valid generated key is swapped for a fresh one; two requests
  must not share a key by the chance of generation (that is 422
  IDEMPOTENCY_KEY_REUSED, as documented).
- Page tokens: a nextPageToken of the same list with the same filters, as
  received. A request carrying a token this run received gets the query it came
  with; any other token within the document's length is left out (the first
  page). A token longer than maxLength is kept: that is a request the document
  calls invalid, and the gateway must refuse it.
- Appointments start from now on and end after they start, within 24 hours; a
  list's window ends after it starts. Valid date-times drawn for those fields are
  moved to a window that holds (an invalid one is left for the server to refuse).
"""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis
from hypothesis import strategies as st

from services.messaging.templates import PLACEHOLDERS

_KEY = re.compile(r"[!-~]{1,255}")

schemathesis.openapi.format("phone", st.sampled_from([
    "+14155550123", "(415) 555-0123", "+1 415 555 0124", "4155550125", "+442079460958",
    "+44 20 7946 0959", "+33 1 42 68 53 00", "+4930901820", "+61 2 9374 4000",
    "+81 3-3224-5000", "+1 (212) 555-0199", "+16502530000",
]))
# One segment in any encoding (70 UCS-2 characters), never blank.
schemathesis.openapi.format("sms-body", st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("C", "Z")), min_size=1,
    max_size=70,
).map(lambda text: text.strip() or "Hello"))
schemathesis.openapi.format("template-body", st.lists(
    st.one_of(st.sampled_from([f"{{{p}}}" for p in PLACEHOLDERS]),
              st.text(alphabet="abcdefghij ,.!0123456789", min_size=1, max_size=20)),
    min_size=1, max_size=6,
).map(lambda parts: "".join(parts).strip() or "Hello {name}"))
schemathesis.openapi.format("page-token", st.just(""))

_lock = threading.Lock()
# Page tokens received: token -> the path and the query it was answered to.
_tokens: dict[str, tuple[str, dict[str, Any]]] = {}


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        found = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return found if found.tzinfo is not None else None


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    headers = case.headers if case.headers is not None else {}
    for name in ("Idempotency-Key", "X-Idempotency-Key"):
        value = headers.get(name)
        if isinstance(value, str) and _KEY.fullmatch(value):
            headers[name] = uuid.uuid4().hex
    query = case.query
    if isinstance(query, dict) and isinstance(query.get("pageToken"), str):
        token = query["pageToken"]
        with _lock:
            received = _tokens.get(token)
        if received is not None and received[0] == case.formatted_path:
            case.query = {**received[1], "pageToken": token}
        elif len(token) <= 1024:
            del query["pageToken"]
    body = case.body
    if case.path == "/v1/appointments" and case.method.upper() == "POST" and isinstance(
            body, dict):
        start, end = _time(body.get("startTime")), _time(body.get("endTime"))
        begins = datetime.now(UTC) + timedelta(days=1)
        if start is not None:
            body["startTime"] = _rfc3339(begins + timedelta(minutes=start.minute))
        if end is not None:
            body["endTime"] = _rfc3339(begins + timedelta(minutes=start.minute if start else 0,
                                                          hours=1))
    if case.path == "/v1/appointments" and case.method.upper() == "GET" and isinstance(
            query, dict):
        start, end = _time(query.get("windowStart")), _time(query.get("windowEnd"))
        if start is not None and end is not None and end <= start:
            query["windowStart"], query["windowEnd"] = query["windowEnd"], query["windowStart"]
            if end == start:
                del query["windowEnd"]


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if response.status_code != 200 or not isinstance(case.query, dict | None):
        return
    try:
        answer = response.json()
    except ValueError:
        return
    token = answer.get("nextPageToken") if isinstance(answer, dict) else None
    if token:
        query = {k: v for k, v in (case.query or {}).items() if k != "pageToken"}
        with _lock:
            _tokens[token] = (case.formatted_path, query)


@schemathesis.check
def google_rpc_status(ctx: Any, response: Any, case: Any) -> bool | None:
    """A /v1 refusal is a google.rpc.Status: code, message, details with an ErrorInfo."""
    if response.status_code < 400 or not case.path.startswith("/v1/"):
        return None
    body = response.json()
    assert isinstance(body.get("code"), int) and body["code"] > 0, body
    assert isinstance(body.get("message"), str), body
    types = [d.get("@type", "") for d in body.get("details", [])]
    assert any(t.endswith("google.rpc.ErrorInfo") for t in types), body
    return True
