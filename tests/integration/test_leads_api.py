"""The leads service through a real gRPC server, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.shared.clients import idempotency, new_key
from services.shared.server import RunningService
from tests.integration.conftest import create_lead, move
from tests.support.rpc import refusal

Stub = leads_pb2_grpc.LeadsServiceStub


async def test_a_created_lead_is_new_at_version_one_and_stored_in_e164(leads: Stub) -> None:
    lead = await leads.CreateLead(
        pb.CreateLeadRequest(name=" Ada Lovelace ", phone="(415) 555-0123", email="a@example.com"),
        metadata=idempotency(new_key()),
    )
    assert (lead.name, lead.phone, lead.status, lead.version) == (
        "Ada Lovelace", "+14155550123", pb.LEAD_STATUS_NEW, 1)
    assert lead.created_by == "alice"
    assert lead.created_at.seconds > 0 and lead.updated_at == lead.created_at
    assert await leads.GetLead(pb.GetLeadRequest(lead_id=lead.lead_id)) == lead


async def test_a_lead_with_bad_fields_is_refused_naming_each_field_and_nothing_is_stored(
    leads: Stub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await leads.CreateLead(
            pb.CreateLeadRequest(name="", phone="555", email="nope"),
            metadata=idempotency(new_key()),
        )
    refused = refusal(failed.value)
    assert refused.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(refused.fields) == {"name", "phone", "email"}
    assert refused.domain == "leads"
    assert (await leads.ListLeads(pb.ListLeadsRequest())).leads == []


async def test_an_unknown_lead_is_not_found_with_its_id_in_the_error(leads: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await leads.GetLead(pb.GetLeadRequest(lead_id="no-such-lead"))
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "LEAD_NOT_FOUND")
    assert refused.metadata == {"lead_id": "no-such-lead"}


async def test_a_lead_moves_forward_and_its_audit_trail_records_who_when_and_the_key(
    leads: Stub,
) -> None:
    lead = await create_lead(leads)
    await move(leads, lead.lead_id, pb.LEAD_STATUS_CONTACTED, key="first-key")
    moved = await move(leads, lead.lead_id, pb.LEAD_STATUS_PROPOSAL_SENT, key="second-key")
    assert (moved.status, moved.version) == (pb.LEAD_STATUS_PROPOSAL_SENT, 3)

    trail = (await leads.ListStatusChanges(pb.ListStatusChangesRequest(lead_id=lead.lead_id)))
    assert [(c.from_status, c.to_status, c.actor, c.idempotency_key, c.version)
            for c in trail.status_changes] == [
        (pb.LEAD_STATUS_NEW, pb.LEAD_STATUS_CONTACTED, "alice", "first-key", 2),
        (pb.LEAD_STATUS_CONTACTED, pb.LEAD_STATUS_PROPOSAL_SENT, "alice", "second-key", 3),
    ]
    assert all(c.changed_at.seconds > 0 for c in trail.status_changes)


async def test_the_audit_trail_names_the_principal_that_made_each_change(
    leads_server: RunningService, channel_for: Callable[[str, str], grpc.aio.Channel]
) -> None:
    alice = Stub(channel_for(leads_server.target, "alice"))
    bob = Stub(channel_for(leads_server.target, "bob"))
    lead = await create_lead(alice)
    await move(bob, lead.lead_id, pb.LEAD_STATUS_LOST)
    trail = await alice.ListStatusChanges(pb.ListStatusChangesRequest(lead_id=lead.lead_id))
    assert [c.actor for c in trail.status_changes] == ["bob"]


@pytest.mark.parametrize(
    ("path", "target", "reason"),
    [
        ([pb.LEAD_STATUS_CONTACTED], pb.LEAD_STATUS_NEW, "INVALID_STATUS_TRANSITION"),
        ([pb.LEAD_STATUS_WON], pb.LEAD_STATUS_LOST, "INVALID_STATUS_TRANSITION"),
        ([pb.LEAD_STATUS_QUALIFIED], pb.LEAD_STATUS_QUALIFIED, "STATUS_UNCHANGED"),
    ],
)
async def test_refused_moves_are_failed_precondition_with_the_reason_and_change_nothing(
    leads: Stub, path: list[int], target: int, reason: str
) -> None:
    lead = await create_lead(leads)
    for status in path:
        lead = await move(leads, lead.lead_id, status)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await move(leads, lead.lead_id, target)
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    assert await leads.GetLead(pb.GetLeadRequest(lead_id=lead.lead_id)) == lead


async def test_a_stale_expected_version_is_aborted_with_version_mismatch(leads: Stub) -> None:
    lead = await create_lead(leads)
    await move(leads, lead.lead_id, pb.LEAD_STATUS_CONTACTED, expected_version=1)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await move(leads, lead.lead_id, pb.LEAD_STATUS_QUALIFIED, expected_version=1)
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.ABORTED, "VERSION_MISMATCH")
    assert refused.metadata["actual_version"] == "2"


async def test_an_unspecified_status_is_an_invalid_argument_naming_the_field(leads: Stub) -> None:
    lead = await create_lead(leads)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await move(leads, lead.lead_id, pb.LEAD_STATUS_UNSPECIFIED)
    assert set(refusal(failed.value).fields) == {"status"}


async def test_list_leads_pages_newest_first_and_filters_by_status(leads: Stub) -> None:
    created = [await create_lead(leads, name=f"Lead {i}") for i in range(5)]
    for lead in created[:3]:
        await move(leads, lead.lead_id, pb.LEAD_STATUS_CONTACTED)

    first = await leads.ListLeads(pb.ListLeadsRequest(page_size=2))
    second = await leads.ListLeads(
        pb.ListLeadsRequest(page_size=2, page_token=first.next_page_token))
    third = await leads.ListLeads(
        pb.ListLeadsRequest(page_size=2, page_token=second.next_page_token))
    names = [x.name for page in (first, second, third) for x in page.leads]
    assert names == [f"Lead {i}" for i in reversed(range(5))]
    assert third.next_page_token == ""

    contacted = await leads.ListLeads(pb.ListLeadsRequest(status=pb.LEAD_STATUS_CONTACTED,
                                                          page_size=10))
    assert sorted(x.name for x in contacted.leads) == ["Lead 0", "Lead 1", "Lead 2"]


async def test_a_page_token_is_refused_with_other_filters_and_page_sizes_are_bounded(
    leads: Stub,
) -> None:
    for i in range(3):
        await create_lead(leads, name=f"Lead {i}")
    page = await leads.ListLeads(pb.ListLeadsRequest(page_size=1))
    for request in (
        pb.ListLeadsRequest(status=pb.LEAD_STATUS_WON, page_token=page.next_page_token),
        pb.ListLeadsRequest(page_token="garbage!"),
        pb.ListLeadsRequest(page_size=-1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await leads.ListLeads(request)
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert set(refusal(failed.value).fields) <= {"page_token", "page_size"}
    # Above the maximum a page size is the maximum (AIP-158), not a refusal.
    everything = await leads.ListLeads(pb.ListLeadsRequest(page_size=2**31 - 1))
    assert len(everything.leads) >= 3


async def test_a_batch_moves_every_lead_and_reports_those_already_there(leads: Stub) -> None:
    a, b, c = [await create_lead(leads, name=n) for n in "abc"]
    await move(leads, c.lead_id, pb.LEAD_STATUS_QUALIFIED)
    result = await leads.BatchUpdateLeadStatus(
        pb.BatchUpdateLeadStatusRequest(lead_ids=[a.lead_id, b.lead_id, c.lead_id],
                                        status=pb.LEAD_STATUS_QUALIFIED),
        metadata=idempotency(new_key()),
    )
    assert [x.lead_id for x in result.updated_leads] == [a.lead_id, b.lead_id]
    assert all((x.status, x.version) == (pb.LEAD_STATUS_QUALIFIED, 2)
               for x in result.updated_leads)
    assert list(result.unchanged_lead_ids) == [c.lead_id]


async def test_a_batch_with_any_refusal_changes_nothing_and_names_every_offender(
    leads: Stub,
) -> None:
    a, won, lost = [await create_lead(leads, name=n) for n in ("a", "won", "lost")]
    await move(leads, won.lead_id, pb.LEAD_STATUS_WON)
    await move(leads, lost.lead_id, pb.LEAD_STATUS_LOST)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await leads.BatchUpdateLeadStatus(
            pb.BatchUpdateLeadStatusRequest(
                lead_ids=[a.lead_id, won.lead_id, lost.lead_id, "missing"],
                status=pb.LEAD_STATUS_NEGOTIATING,
            ),
            metadata=idempotency(new_key()),
        )
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BATCH_REFUSED")
    assert refused.violations == [
        ("INVALID_STATUS_TRANSITION", f"leads/{won.lead_id}"),
        ("INVALID_STATUS_TRANSITION", f"leads/{lost.lead_id}"),
        ("LEAD_NOT_FOUND", "leads/missing"),
    ]
    untouched = await leads.GetLead(pb.GetLeadRequest(lead_id=a.lead_id))
    assert (untouched.status, untouched.version) == (pb.LEAD_STATUS_NEW, 1)
    trail = await leads.ListStatusChanges(pb.ListStatusChangesRequest(lead_id=a.lead_id))
    assert list(trail.status_changes) == []


@pytest.mark.parametrize(
    ("lead_ids", "field"),
    [([], "lead_ids"), ([f"id-{i}" for i in range(101)], "lead_ids"),
     (["x", "y", "x"], "lead_ids[2]")],
)
async def test_a_batch_that_is_empty_too_long_or_repeats_a_lead_is_refused(
    leads: Stub, lead_ids: list[str], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await leads.BatchUpdateLeadStatus(
            pb.BatchUpdateLeadStatusRequest(lead_ids=lead_ids, status=pb.LEAD_STATUS_WON),
            metadata=idempotency(new_key()),
        )
    assert field in refusal(failed.value).fields


async def test_status_changes_page_in_order_and_an_unknown_lead_is_not_found(leads: Stub) -> None:
    lead = await create_lead(leads)
    for status in (pb.LEAD_STATUS_CONTACTED, pb.LEAD_STATUS_QUALIFIED, pb.LEAD_STATUS_NEGOTIATING):
        await move(leads, lead.lead_id, status)
    first = await leads.ListStatusChanges(
        pb.ListStatusChangesRequest(lead_id=lead.lead_id, page_size=2))
    rest = await leads.ListStatusChanges(pb.ListStatusChangesRequest(
        lead_id=lead.lead_id, page_size=2, page_token=first.next_page_token))
    assert [c.version for c in [*first.status_changes, *rest.status_changes]] == [2, 3, 4]
    assert rest.next_page_token == ""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await leads.ListStatusChanges(pb.ListStatusChangesRequest(lead_id="missing"))
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND


async def test_injection_strings_are_stored_and_returned_literally(leads: Stub) -> None:
    name = "Robert'); DROP TABLE leads;-- <script>alert(1)</script>"
    lead = await create_lead(leads, name=name)
    assert (await leads.GetLead(pb.GetLeadRequest(lead_id=lead.lead_id))).name == name
    assert len((await leads.ListLeads(pb.ListLeadsRequest())).leads) == 1


async def test_leads_are_found_by_phone_however_the_number_is_written(leads: Stub) -> None:
    ada = await create_lead(leads, "Ada Lovelace", "+1 415 555 0188")
    await create_lead(leads, "Someone Else", "+1 415 555 0189")
    for written in ("(415) 555-0188", "+14155550188", "415.555.0188", "+1 415-555-0188"):
        found = await leads.ListLeads(pb.ListLeadsRequest(phone=written))
        assert [lead.lead_id for lead in found.leads] == [ada.lead_id], written
    twin = await create_lead(leads, "Ada's Office", "415 555 0188")  # a second, deliberately
    found = await leads.ListLeads(pb.ListLeadsRequest(phone="4155550188", page_size=1))
    rest = await leads.ListLeads(pb.ListLeadsRequest(phone="4155550188",
                                                     page_token=found.next_page_token))
    assert [x.lead_id for x in [*found.leads, *rest.leads]] == [twin.lead_id, ada.lead_id]
    assert list((await leads.ListLeads(pb.ListLeadsRequest(phone="+44 20 7946 0958"))).leads) == []


async def test_a_phone_filter_that_is_no_number_is_refused_naming_phone(leads: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await leads.ListLeads(pb.ListLeadsRequest(phone="12"))
    refused = refusal(failed.value)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid phone number" in refused.fields["phone"]


@pytest.mark.parametrize(("written", "shown"), [
    ("(415) 555-0123", "+1 415-555-0123"),
    ("+44 20 7946 0958", "+44 20 7946 0958"),
    ("+49 30 901820", "+49 30 901820"),
])
async def test_a_lead_carries_its_number_as_its_own_country_writes_it(
    leads: Stub, written: str, shown: str
) -> None:
    lead = await create_lead(leads, "Ada Lovelace", written)
    assert lead.phone_display == shown
    assert (await leads.GetLead(pb.GetLeadRequest(lead_id=lead.lead_id))).phone_display == shown
