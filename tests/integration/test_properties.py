"""Any input, any service: a success or a proper refusal naming the field, never a crash.

Hypothesis throws arbitrary strings (control characters, surrogates' neighbours,
SQL and script injection, huge texts), numbers and enum values at every RPC's
validation through a real server, and checks that each answer is either a
success that stored exactly what was sent (normalized) or a refusal with a
google.rpc.Status whose ErrorInfo reason and BadRequest fields make sense.
"""

from __future__ import annotations

import grpc
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.shared.clients import idempotency, new_key
from tests.support.rpc import refusal

EXAMPLES = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
NASTY = st.sampled_from([
    "", " ", "'; DROP TABLE leads; --", "<script>alert(1)</script>", "\x00", "\u202e", "😀",
    "Robert'); DELETE FROM lead_status_changes;--", "%s%s%n", "../../etc/passwd", "x" * 300,
])
TEXT = st.one_of(NASTY, st.text(max_size=300))
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED,
           grpc.StatusCode.OUT_OF_RANGE}


def proper(error: grpc.aio.AioRpcError, fields: set[str]) -> None:
    """A refusal that is well formed: an allowed code, a reason, fields it names exist."""
    refused = refusal(error)
    assert refused.code in ALLOWED, (refused.code, refused.message)
    assert refused.reason and refused.reason.isupper(), refused
    assert refused.domain in {"leads", "messaging", "bookings"}
    assert set(refused.fields) <= fields, refused.fields


@given(name=TEXT, phone=st.one_of(TEXT, st.sampled_from(["+14155550123", "(415) 555-0123"])),
       email=TEXT)
@EXAMPLES
async def test_create_lead_stores_what_it_accepts_and_names_what_it_refuses(
    leads: leads_pb2_grpc.LeadsServiceStub, name: str, phone: str, email: str
) -> None:
    try:
        lead = await leads.CreateLead(pb.CreateLeadRequest(name=name, phone=phone, email=email),
                                      metadata=idempotency(new_key()))
    except grpc.aio.AioRpcError as error:
        proper(error, {"name", "phone", "email"})
        return
    assert lead.name == name.strip() and lead.email == email.strip()
    assert lead.phone.startswith("+") and lead.status == pb.LEAD_STATUS_NEW
    assert await leads.GetLead(pb.GetLeadRequest(lead_id=lead.lead_id)) == lead


@given(lead_id=st.one_of(st.none(), TEXT),
       status=st.one_of(st.integers(min_value=1, max_value=7),
                        st.integers(min_value=-5, max_value=20)),
       expected=st.one_of(st.none(), st.sampled_from([0, 1, 2]),
                          st.integers(min_value=-(2**63), max_value=2**63 - 1)))
@example(lead_id=None, status=pb.LEAD_STATUS_QUALIFIED, expected=1)  # good
@example(lead_id=None, status=pb.LEAD_STATUS_NEW, expected=None)  # already NEW
@example(lead_id=None, status=pb.LEAD_STATUS_WON, expected=2)  # a stale version
@EXAMPLES
async def test_update_status_refuses_bad_ids_statuses_and_versions_cleanly(
    leads: leads_pb2_grpc.LeadsServiceStub, lead_id: str | None, status: int,
    expected: int | None,
) -> None:
    """A move succeeds exactly when it is a good one: an existing lead (None draws a
    new lead's id), a status a NEW lead may move to, no version or its own."""
    lead = await leads.CreateLead(pb.CreateLeadRequest(name="Ada", phone="+14155550123"),
                                  metadata=idempotency(new_key()))
    request = pb.UpdateLeadStatusRequest(lead_id=lead.lead_id if lead_id is None else lead_id,
                                         status=status)  # type: ignore[arg-type]
    if expected is not None:
        request.expected_version = expected
    good = (lead_id is None and pb.LEAD_STATUS_CONTACTED <= status <= pb.LEAD_STATUS_LOST
            and expected in (None, lead.version))
    try:
        moved = await leads.UpdateLeadStatus(request, metadata=idempotency(new_key()))
    except grpc.aio.AioRpcError as error:
        proper(error, {"lead_id", "status"})
        assert not good, f"a good move was refused: {request}"
        return
    assert good, f"a bad move succeeded: {request}"
    assert (moved.lead_id, moved.status, moved.version) == (lead.lead_id, status, 2)


@given(lead_ids=st.lists(TEXT, max_size=120), status=st.integers(min_value=0, max_value=9))
@EXAMPLES
async def test_a_batch_of_anything_is_refused_whole_or_not_at_all(
    leads: leads_pb2_grpc.LeadsServiceStub, lead_ids: list[str], status: int
) -> None:
    try:
        await leads.BatchUpdateLeadStatus(
            pb.BatchUpdateLeadStatusRequest(lead_ids=lead_ids, status=status),  # type: ignore[arg-type]
            metadata=idempotency(new_key()))
    except grpc.aio.AioRpcError as error:
        proper(error, {"lead_ids", "status"} | {f"lead_ids[{i}]" for i in range(len(lead_ids))})


@given(size=st.integers(min_value=-(2**31), max_value=2**31 - 1), token=TEXT,
       status=st.integers(min_value=-3, max_value=12))
@EXAMPLES
async def test_list_leads_bounds_page_sizes_and_tokens(
    leads: leads_pb2_grpc.LeadsServiceStub, size: int, token: str, status: int
) -> None:
    try:
        page = await leads.ListLeads(pb.ListLeadsRequest(page_size=size, page_token=token,
                                                         status=status))  # type: ignore[arg-type]
    except grpc.aio.AioRpcError as error:
        proper(error, {"page_size", "page_token", "status"})
        return
    assert len(page.leads) <= 200


@given(cursor=TEXT, types=st.lists(TEXT, max_size=3), ids=st.lists(TEXT, max_size=3))
@EXAMPLES
async def test_subscribe_refuses_bad_cursors_and_filters_before_streaming(
    leads: leads_pb2_grpc.LeadsServiceStub, cursor: str, types: list[str], ids: list[str]
) -> None:
    stream = leads.Subscribe(pb.SubscribeRequest(after_cursor=cursor, types=types, lead_ids=ids))
    try:
        first = await stream.read()
    except grpc.aio.AioRpcError as error:
        proper(error, {"after_cursor", "types", "lead_ids"}
               | {f"types[{i}]" for i in range(3)} | {f"lead_ids[{i}]" for i in range(3)})
        return
    finally:
        stream.cancel()
    assert first.type == "bookmark"
