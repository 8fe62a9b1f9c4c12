"""The gateway's pure parts: templates, query parsing, JSON, the error table, ids, sessions."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from crm.bookings.v1 import bookings_pb2
from crm.leads.v1 import leads_pb2
from google.rpc import code_pb2
from multidict import MultiDict

from gateway import errors, events, json_mapping, transcoding
from gateway.config import Settings
from gateway.ended_sessions import SqliteEndedSessions
from gateway.errors import GatewayError
from gateway.hub import Entry
from gateway.sessions import Sessions, _unb64
from services.shared.config import ConfigError

TOKENS = "alice:alice-token-0123456789,gateway:gateway-token-0123456789"
ALICE = "alice-token-0123456789"


def violations(error: GatewayError) -> dict[str, str]:
    status = error.refusal.status
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.type_url.endswith("BadRequest"):
            from google.rpc import error_details_pb2

            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.description for v in bad.field_violations})
    return found


# -- path templates ------------------------------------------------------------------


def test_a_template_with_a_custom_verb_routes_apart_from_the_plain_path() -> None:
    parsed = transcoding.parse_template("/v1/leads/{lead_id}:updateStatus")
    assert parsed.pattern == "/v1/leads/{v0:[^/:]+}:updateStatus"
    assert parsed.variables == (("v0", "lead_id"),)
    assert parsed.openapi_path == "/v1/leads/{lead_id}:updateStatus"
    collection = transcoding.parse_template("/v1/leads:batchUpdateStatus")
    assert (collection.pattern, collection.variables) == ("/v1/leads:batchUpdateStatus", ())


def test_templates_with_segment_patterns_and_wildcards_are_understood() -> None:
    parsed = transcoding.parse_template("/v1/{name=shelves/*/books/*}/{rest=**}:publish")
    assert parsed.variables == (("v0", "name"), ("v1", "rest"))
    assert parsed.pattern.startswith("/v1/{v0:shelves/[^/:]+/books/[^/:]+}/{v1:")
    assert parsed.openapi_path == "/v1/{name}/{rest}:publish"
    for bad in ("v1/leads", "/v1/{lead_id", "/v1/{lead-id}"):
        with pytest.raises(ValueError):
            transcoding.parse_template(bad)


def test_every_annotated_method_of_the_contracts_becomes_a_route() -> None:
    routes = {(b.verb, b.path.template) for b in transcoding.bindings()}
    assert ("POST", "/v1/leads/{lead_id}:updateStatus") in routes
    assert ("GET", "/v1/leads/{lead_id}/messages") in routes
    assert ("POST", "/v1/appointments/{appointment_id}:confirm") in routes
    assert ("POST", "/v1/messageTemplates/{template_id}:delete") in routes
    assert len(routes) == 20  # the message templates' three among them
    names = {b.method.name for b in transcoding.bindings()}
    assert not names & {"Subscribe", "ReceiveInboundMessage", "RecordDeliveryStatus"}


# -- the query string ------------------------------------------------------------------


def binding(rpc: str) -> transcoding.Binding:
    return next(b for b in transcoding.bindings() if b.method.name == rpc)


def test_query_parameters_fill_scalars_enums_and_timestamps_as_grpc_gateway_does() -> None:
    query = MultiDict([("leadId", "lead-1"), ("agent_id", "agent-7"), ("status", "2"),
                       ("windowStart", "2031-03-03T09:00:00Z"), ("pageSize", "20")])
    request = transcoding.request_from(binding("ListAppointments"), {}, query, b"")
    assert isinstance(request, bookings_pb2.ListAppointmentsRequest)
    assert (request.lead_id, request.agent_id, request.status, request.page_size) == (
        "lead-1", "agent-7", bookings_pb2.APPOINTMENT_STATUS_CONFIRMED, 20)
    assert request.window_start.ToDatetime(UTC) == datetime(2031, 3, 3, 9, tzinfo=UTC)


def test_nested_fields_go_by_dots_and_repeated_ones_by_repeated_keys() -> None:
    descriptor = leads_pb2.Event.DESCRIPTOR
    data = json_mapping.query_fields(descriptor, MultiDict([
        ("lead.name", "Ada"), ("lead.version", "3"), ("lead.status", "LEAD_STATUS_WON"),
        ("bookmark.head_cursor", "abc")]), set())
    event = json_mapping.parse(data, leads_pb2.Event())
    assert isinstance(event, leads_pb2.Event)
    assert (event.lead.name, event.lead.version, event.lead.status) == (
        "Ada", 3, leads_pb2.LEAD_STATUS_WON)
    assert event.bookmark.head_cursor == "abc"
    subscribe = json_mapping.query_fields(leads_pb2.SubscribeRequest.DESCRIPTOR, MultiDict(
        [("lead_ids", "a"), ("leadIds", "b"), ("types", "lead.created")]), set())
    assert subscribe == {"leadIds": ["a", "b"], "types": ["lead.created"]}


@pytest.mark.parametrize(("query", "field"), [
    ("status=PROMOTED", "status"), ("pageSize=1.5", "pageSize"), ("page_size=x", "page_size"),
    ("nope=1", "nope"), ("status=LEAD_STATUS_NEW&status=LEAD_STATUS_WON", "status"),
    ("page_token.x=1", "page_token.x"),
    ("pageSize=1&page_size=2", "pageSize"),
])
def test_bad_query_parameters_are_refused_naming_them(query: str, field: str) -> None:
    pairs = [tuple(part.split("=")) for part in query.split("&")]
    with pytest.raises(GatewayError) as refused:
        transcoding.request_from(binding("ListLeads"), {}, MultiDict(pairs), b"")
    assert field in violations(refused.value)


def test_a_body_is_read_in_either_spelling_and_unknown_or_misshapen_fields_are_named() -> None:
    update = binding("UpdateLeadStatus")
    request = transcoding.request_from(update, {"v0": "lead-9"}, MultiDict(),
                                       b'{"lead_id": "other", "status": "LEAD_STATUS_WON", '
                                       b'"expected_version": "4"}')
    assert isinstance(request, leads_pb2.UpdateLeadStatusRequest)
    assert (request.lead_id, request.status, request.expected_version) == (
        "lead-9", leads_pb2.LEAD_STATUS_WON, 4)
    with pytest.raises(GatewayError) as unknown:
        transcoding.request_from(update, {"v0": "x"}, MultiDict(), b'{"statuz": "LEAD_STATUS_WON"}')
    assert set(violations(unknown.value)) == {"statuz"}
    with pytest.raises(GatewayError) as wrong:
        transcoding.request_from(update, {"v0": "x"}, MultiDict(), b'{"status": 3.5e9}')
    assert set(violations(wrong.value)) == {"status"}
    with pytest.raises(GatewayError) as nested:
        json_mapping.raise_if_any(json_mapping.check_fields(
            leads_pb2.Event.DESCRIPTOR, {"lead": {"nickname": "A"}, "bookmark": []}, ""),
            "UNKNOWN_FIELD")
    assert set(violations(nested.value)) == {"lead.nickname", "bookmark"}


def test_a_body_bound_to_one_field_leaves_the_rest_to_the_query() -> None:
    batch = dataclasses.replace(binding("BatchUpdateLeadStatus"), body="lead_ids",
                                response_body="unchanged_lead_ids")
    request = transcoding.request_from(batch, {}, MultiDict([("status", "LEAD_STATUS_WON")]),
                                       b'["a", "b"]')
    assert isinstance(request, leads_pb2.BatchUpdateLeadStatusRequest)
    assert (list(request.lead_ids), request.status) == (["a", "b"], leads_pb2.LEAD_STATUS_WON)
    with pytest.raises(GatewayError) as twice:
        transcoding.request_from(batch, {}, MultiDict([("leadIds", "c")]), b'["a"]')
    assert "leadIds" in violations(twice.value)
    answer = leads_pb2.BatchUpdateLeadStatusResponse(unchanged_lead_ids=["b"])
    assert transcoding.response_json(batch, answer) == ["b"]


def test_json_out_has_every_field_with_unset_messages_as_null() -> None:
    written = json_mapping.to_json(leads_pb2.Event(type="lead.created", lead_id="x",
                                                  lead=leads_pb2.Lead(lead_id="x", version=2)))
    assert written["bookmark"] is None and written["statusChange"] is None
    assert written["lead"]["version"] == "2" and written["lead"]["createdAt"] is None
    assert written["lead"]["status"] == "LEAD_STATUS_UNSPECIFIED"
    assert written["actor"] == ""
    optional = json_mapping.to_json(leads_pb2.UpdateLeadStatusRequest(lead_id="x"))
    assert "expectedVersion" not in optional  # proto3 optional: absent, as protojson does


# -- the error table ---------------------------------------------------------------------


@pytest.mark.parametrize(("code", "http"), [
    ("OK", 200), ("CANCELLED", 499), ("UNKNOWN", 500), ("INVALID_ARGUMENT", 400),
    ("DEADLINE_EXCEEDED", 504), ("NOT_FOUND", 404), ("ALREADY_EXISTS", 409),
    ("PERMISSION_DENIED", 403), ("RESOURCE_EXHAUSTED", 429), ("FAILED_PRECONDITION", 409),
    ("ABORTED", 409), ("OUT_OF_RANGE", 400), ("UNIMPLEMENTED", 501), ("INTERNAL", 500),
    ("UNAVAILABLE", 503), ("DATA_LOSS", 500), ("UNAUTHENTICATED", 401),
])
def test_every_code_has_its_http_status(code: str, http: int) -> None:
    status = errors.make_status(code_pb2.Code.Value(code), "SOMETHING", "m", domain="leads")
    assert errors.http_status(status) == http


@pytest.mark.parametrize(("reason", "code", "http"), [
    ("IDEMPOTENCY_KEY_MISSING", "INVALID_ARGUMENT", 400),
    ("IDEMPOTENCY_KEY_REUSED", "INVALID_ARGUMENT", 422),
    ("IDEMPOTENCY_KEY_IN_USE", "ABORTED", 409),
    ("VERSION_MISMATCH", "ABORTED", 409),
    ("SLOT_TAKEN", "FAILED_PRECONDITION", 409),
    ("RECIPIENT_OPTED_OUT", "FAILED_PRECONDITION", 409),
])
def test_design_md_rows_come_first(reason: str, code: str, http: int) -> None:
    status = errors.make_status(code_pb2.Code.Value(code), reason, "m", domain="bookings")
    assert errors.http_status(status) == http


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    for delay, header in ((2.2, "3"), (3.0, "3"), (0.001, "1"), (0.0, "0")):
        status = errors.make_status(code_pb2.UNAVAILABLE, "PROVIDER_CIRCUIT_OPEN", "open",
                                    domain="messaging", retry_after=delay)
        assert errors.refusal(status).headers["Retry-After"] == header
    bare = errors.make_status(code_pb2.UNAVAILABLE, "X", "down", domain="leads")
    assert "Retry-After" not in errors.refusal(bare).headers


def test_a_gateway_reason_only_counts_in_the_gateway_domain() -> None:
    ours = errors.make_status(code_pb2.RESOURCE_EXHAUSTED, "BODY_TOO_LARGE", "big")
    theirs = errors.make_status(code_pb2.RESOURCE_EXHAUSTED, "BODY_TOO_LARGE", "big",
                                domain="leads")
    assert (errors.http_status(ours), errors.http_status(theirs)) == (413, 429)


# -- event ids and filters ------------------------------------------------------------


def test_a_composite_id_round_trips_and_foreign_ones_are_refused() -> None:
    cursors = {"messaging": "bQ", "leads": "bA"}
    assert events.decode_id(events.encode_id(cursors)) == cursors
    assert "=" not in events.encode_id({"leads": "x" * 7})
    for bad in ("", "!!", "W10", "eyJmb28iOiAiYmFyIn0", "eyJsZWFkcyI6IDF9"):
        with pytest.raises(GatewayError):
            events.decode_id(bad)


def test_filters_choose_the_services_to_follow() -> None:
    def services(pairs: list[tuple[str, str]]) -> tuple[str, ...]:
        return events.select(MultiDict(pairs)).services

    assert services([]) == ("leads", "bookings", "messaging")
    assert services([("lead_id", "a")]) == ("leads", "bookings", "messaging")
    assert services([("appointment_id", "x")]) == ("bookings",)
    assert services([("types", "lead.created,recipient.opted_out")]) == ("leads", "messaging")
    assert services([("types", "provider.state_changed"), ("types", "message.created")]) == (
        "messaging",)
    chosen = events.select(MultiDict([("types", "lead.created,appointment.confirmed"),
                                      ("lead_id", "L1")]))

    def entry(kind: str, lead_id: str = "L1", appointment_id: str = "") -> Entry:
        return Entry(1, "c", kind, lead_id, appointment_id, b"", b"")

    # The gateway applies each browser's filters to the shared streams itself.
    assert chosen.matches("bookings", entry("appointment.confirmed", appointment_id="A"))
    assert not chosen.matches("bookings", entry("appointment.created"))
    assert not chosen.matches("leads", entry("lead.created", lead_id="L2"))
    one = events.select(MultiDict([("appointment_id", "A")]))
    assert one.matches("bookings", entry("appointment.created", "L9", "A"))
    assert not one.matches("bookings", entry("appointment.created", "L9", "B"))


# -- sessions -------------------------------------------------------------------------


def test_a_session_cookie_is_signed_expires_and_binds_its_csrf_token() -> None:
    sessions = Sessions(Settings.from_env({"CRM_API_TOKENS": TOKENS}))
    value, session = sessions.issue(ALICE, "alice")
    assert sessions.read(value) == session
    assert "alice-token" not in value and ALICE not in _unb64(value.split(".")[0]).decode()
    assert sessions.credential(session) == ALICE
    csrf = sessions.csrf_token(session)
    sessions.check_csrf(session, csrf)
    _, other = sessions.issue(ALICE, "alice")
    with pytest.raises(GatewayError):
        sessions.check_csrf(other, csrf)
    with pytest.raises(GatewayError) as expired:
        sessions.read(value, now=time.time() + 9 * 3600)
    assert expired.value.refusal.reason == "SESSION_EXPIRED"
    replica = Sessions(Settings.from_env({"CRM_API_TOKENS": TOKENS}))
    assert replica.read(value) == session  # replicas derive the same secret
    rotated = Sessions(Settings.from_env({"CRM_API_TOKENS": TOKENS,
                                          "CRM_SESSION_SECRET": "s" * 32}))
    with pytest.raises(GatewayError) as invalid:
        rotated.read(value)
    assert invalid.value.refusal.reason == "SESSION_INVALID"


@pytest.mark.parametrize("secret", [None, "s" * 32])
def test_a_session_of_a_removed_or_rotated_token_is_revoked(secret: str | None) -> None:
    env = {"CRM_SESSION_SECRET": secret} if secret else {}
    value, _ = Sessions(Settings.from_env({"CRM_API_TOKENS": TOKENS, **env})).issue(
        ALICE, "alice")
    for tokens in ("gateway:gateway-token-0123456789",
                   "alice:alice-rotated-0123456789,gateway:gateway-token-0123456789"):
        later = Sessions(Settings.from_env({"CRM_API_TOKENS": tokens, **env}))
        if secret is None:  # the derived secret changed with the tokens: a new key
            with pytest.raises(GatewayError) as invalid:
                later.read(value)
            assert invalid.value.refusal.reason == "SESSION_INVALID"
            continue
        with pytest.raises(GatewayError) as revoked:
            later.credential(later.read(value))
        assert revoked.value.refusal.reason == "SESSION_REVOKED"


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(("env", "says"), [
    ({"CRM_PUBLIC_URL": "crm.example.com"}, "CRM_PUBLIC_URL"),
    ({"CRM_SESSION_SECRET": "short"}, "CRM_SESSION_SECRET"),
    ({"CRM_GATEWAY_MAX_BODY_BYTES": "12"}, "CRM_GATEWAY_MAX_BODY_BYTES"),
    ({"CRM_SSE_HEARTBEAT_SECONDS": "60"}, "CRM_SSE_HEARTBEAT_SECONDS"),
    ({"CRM_GATEWAY_STATIC_DIR": "/no/such/dir"}, "CRM_GATEWAY_STATIC_DIR"),
    ({"CRM_API_TOKENS": "alice:alice-token-0123456789", "TWILIO_AUTH_TOKEN": "t"},
     "CRM_SERVICE_TOKEN"),
])
def test_bad_configuration_fails_loudly_by_name(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.from_env({"CRM_API_TOKENS": TOKENS, **env})


@pytest.mark.parametrize("env", [
    {"CRM_SESSION_SECRET": "a-secret-too-short-0123"},
    {"CRM_API_TOKENS": "alice:a-secret-too-short-0123,gateway:short-secret"},
])
def test_a_configuration_error_never_repeats_a_secret(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"CRM_API_TOKENS": TOKENS, **env})
    assert str(refused.value).startswith(next(iter(env))), refused.value
    assert "secret" not in str(refused.value).lower().replace("crm_session_secret", "")


def test_defaults_and_the_service_token_of_principal_gateway() -> None:
    settings = Settings.from_env({"CRM_API_TOKENS": TOKENS})
    assert settings.targets == {"leads": "127.0.0.1:50051", "bookings": "127.0.0.1:50052",
                                "messaging": "127.0.0.1:50053"}
    assert (settings.service_token, settings.max_body_bytes, settings.heartbeat_seconds) == (
        "gateway-token-0123456789", 65536, 15.0)
    assert settings.token_of("alice") == "alice-token-0123456789"
    assert "token" not in repr(settings).replace("service_token", "").replace("tokens", "")


async def test_ended_sessions_fail_closed_when_their_file_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = SqliteEndedSessions(blocker / "gateway.db")
    for attempt in (store.ended("n"), store.end("n", 0)):
        with pytest.raises(GatewayError) as refused:
            await attempt
        assert (refused.value.refusal.reason, refused.value.refusal.http_status) == (
            "SESSION_STORE_UNAVAILABLE", 503)


async def test_ended_sessions_are_kept_until_they_would_have_expired(tmp_path: Path) -> None:
    store = SqliteEndedSessions(tmp_path / "gateway.db")
    await store.end("old", int(time.time()) - 1)
    await store.end("live", int(time.time()) + 3600)
    assert (await store.ended("live"), await store.ended("other")) == (True, False)
    await store.end("another", int(time.time()) + 3600)
    assert not await store.ended("old")  # past its expiry: the cookie is refused anyway
    await store.close()
    assert await SqliteEndedSessions(tmp_path / "gateway.db").ended("live")  # kept on disk
