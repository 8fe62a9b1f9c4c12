"""The lead status machine, with no IO."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.leads.domain import (
    BatchRefused,
    InvalidStatusTransition,
    Lead,
    LeadCreated,
    LeadNotFound,
    LeadStatus,
    LeadStatusChanged,
    StatusUnchanged,
    VersionMismatch,
    allowed_moves,
)
from services.shared.errors import InvalidArgument

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
S = LeadStatus


def new_lead(**overrides: str) -> Lead:
    fields = {"name": "Ada Lovelace", "phone": "+1 415 555 0123", "email": "ada@example.com"}
    fields.update(overrides)
    return Lead.create(lead_id="lead-1", actor="alice", now=NOW, region="US", **fields)


def lead_in(status: LeadStatus) -> Lead:
    lead = new_lead()
    if status is not S.NEW:
        lead.move_to(status, actor="alice", now=NOW, idempotency_key="k0")
    lead.pull_events()
    return lead


def test_a_new_lead_starts_new_at_version_one_with_its_phone_in_e164() -> None:
    lead = new_lead(phone="(415) 555-0123")
    assert (lead.status, lead.version, lead.phone) == (S.NEW, 1, "+14155550123")
    assert [type(e) for e in lead.events] == [LeadCreated]


def test_a_lead_with_bad_fields_is_refused_naming_every_field() -> None:
    with pytest.raises(InvalidArgument) as refused:
        new_lead(name="  ", phone="12", email="not-an-email")
    assert {v.field for v in refused.value.violations} == {"name", "phone", "email"}


@pytest.mark.parametrize("phone", ["", "+1 555", "call me maybe", "+1" + "5" * 40])
def test_a_phone_number_that_cannot_exist_is_refused(phone: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        new_lead(phone=phone)
    assert [v.field for v in refused.value.violations] == ["phone"]


def test_a_name_longer_than_the_limit_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="at most 200"):
        new_lead(name="x" * 201)


@pytest.mark.parametrize(
    ("start", "target"),
    [(S.NEW, S.CONTACTED), (S.NEW, S.WON), (S.CONTACTED, S.NEGOTIATING),
     (S.NEGOTIATING, S.WON), (S.NEW, S.LOST), (S.NEGOTIATING, S.LOST)],
)
def test_a_lead_moves_forward_skipping_steps_or_to_lost(
    start: LeadStatus, target: LeadStatus
) -> None:
    lead = lead_in(start)
    version = lead.version
    change = lead.move_to(target, actor="bob", now=NOW, idempotency_key="k1")
    assert lead.status is target and lead.version == version + 1
    assert (change.from_status, change.to_status, change.actor, change.idempotency_key) == (
        start, target, "bob", "k1")
    assert change.version == lead.version
    assert [type(e) for e in lead.events] == [LeadStatusChanged]


@pytest.mark.parametrize(
    ("start", "target"),
    [(S.CONTACTED, S.NEW), (S.NEGOTIATING, S.QUALIFIED), (S.WON, S.LOST), (S.LOST, S.NEW),
     (S.WON, S.NEGOTIATING), (S.LOST, S.WON)],
)
def test_a_lead_never_moves_backwards_or_out_of_a_final_status(
    start: LeadStatus, target: LeadStatus
) -> None:
    lead = lead_in(start)
    with pytest.raises(InvalidStatusTransition) as refused:
        lead.move_to(target, actor="bob", now=NOW, idempotency_key="k1")
    assert refused.value.reason == "INVALID_STATUS_TRANSITION"
    assert lead.status is start and not lead.events


def test_a_won_lead_cannot_be_reopened() -> None:
    with pytest.raises(InvalidStatusTransition, match="won is final"):
        lead_in(S.WON).move_to(S.CONTACTED, actor="bob", now=NOW, idempotency_key="k")


def test_moving_a_lead_to_its_own_status_is_refused_as_unchanged() -> None:
    lead = lead_in(S.QUALIFIED)
    with pytest.raises(StatusUnchanged) as refused:
        lead.move_to(S.QUALIFIED, actor="bob", now=NOW, idempotency_key="k")
    assert refused.value.reason == "STATUS_UNCHANGED"
    assert lead.version == 2


def test_a_stale_expected_version_is_refused_before_anything_else() -> None:
    lead = lead_in(S.CONTACTED)
    with pytest.raises(VersionMismatch) as refused:
        lead.move_to(S.CONTACTED, actor="b", now=NOW, idempotency_key="k", expected_version=1)
    assert refused.value.metadata == {"lead_id": "lead-1", "expected_version": "1",
                                      "actual_version": "2"}


def test_the_current_expected_version_lets_the_move_happen() -> None:
    lead = lead_in(S.CONTACTED)
    lead.move_to(S.QUALIFIED, actor="b", now=NOW, idempotency_key="k", expected_version=2)
    assert lead.version == 3


def test_allowed_moves_list_the_later_pipeline_steps_then_lost() -> None:
    assert allowed_moves(S.QUALIFIED) == [S.PROPOSAL_SENT, S.NEGOTIATING, S.WON, S.LOST]
    assert allowed_moves(S.WON) == allowed_moves(S.LOST) == []


def test_a_refused_batch_names_every_offender_and_takes_a_shared_reason() -> None:
    refusals = [("a", InvalidStatusTransition("a", S.WON, S.NEW)),
                ("b", InvalidStatusTransition("b", S.LOST, S.NEW))]
    refused = BatchRefused(refusals)  # type: ignore[arg-type]
    assert refused.reason == "INVALID_STATUS_TRANSITION"
    assert [v.subject for v in refused.violations] == ["leads/a", "leads/b"]


def test_a_batch_refused_for_mixed_reasons_says_so() -> None:
    refused = BatchRefused([("a", LeadNotFound("a")),
                            ("b", InvalidStatusTransition("b", S.WON, S.NEW))])
    assert refused.reason == "BATCH_REFUSED"
    assert {v.type for v in refused.violations} == {"LEAD_NOT_FOUND", "INVALID_STATUS_TRANSITION"}
