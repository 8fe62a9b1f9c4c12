"""Messages, consent and body limits, with no IO."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.messaging.domain import (
    Handoff,
    Message,
    MessageCreated,
    MessageStatus,
    MessageStatusChanged,
    MessageTooLong,
    Recipient,
    check_body,
    consent_keyword,
)
from services.messaging.segments import Encoding, measure
from services.shared.errors import InvalidArgument

NOW = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
S = MessageStatus


def outbound(body: str = "See you at 3pm") -> Message:
    return Message.outbound(message_id="m1", lead_id="l1", to="+14155550111",
                            from_="+15005550006", body=body, cost=measure(body),
                            provider="twilio", actor="alice", now=NOW)


def test_an_outbound_text_starts_queued_in_flight_and_announces_itself() -> None:
    message = outbound()
    assert (message.status, message.handoff, message.segments) == (S.QUEUED, Handoff.IN_FLIGHT, 1)
    assert [type(e) for e in message.pull_events()] == [MessageCreated]


def test_statuses_only_move_forward_whatever_order_reports_arrive_in() -> None:
    message = outbound()
    assert message.advance(S.DELIVERED, now=NOW)
    for late in (S.SENT, S.SENDING, S.QUEUED, S.UNDELIVERED, S.FAILED, S.DELIVERED):
        assert not message.advance(late, now=NOW)
    assert message.status is S.DELIVERED
    changes = [e for e in message.events if isinstance(e, MessageStatusChanged)]
    assert [(c.previous, c.message.status) for c in changes] == [(S.QUEUED, S.DELIVERED)]


def test_an_accepted_text_keeps_a_status_a_callback_already_reported() -> None:
    message = outbound()
    message.advance(S.SENT, now=NOW)
    message.accepted("SM1", S.QUEUED, NOW)
    assert (message.status, message.handoff, message.provider_message_id) == (
        S.SENT, Handoff.ACCEPTED, "SM1")


def test_a_rejected_text_fails_with_the_providers_code() -> None:
    message = outbound()
    message.rejected(21211, "invalid number", NOW)
    assert (message.status, message.error_code, message.handoff) == (S.FAILED, 21211,
                                                                      Handoff.REJECTED)


@pytest.mark.parametrize(("handoff", "maybe"), [(Handoff.IN_FLIGHT, True),
                                                (Handoff.UNCERTAIN, True),
                                                (Handoff.NONE, False), (Handoff.ACCEPTED, False)])
def test_only_in_flight_or_uncertain_texts_may_have_reached_the_provider(
    handoff: Handoff, maybe: bool
) -> None:
    assert handoff.maybe_sent is maybe


@pytest.mark.parametrize(
    ("body", "answer"),
    [("STOP", True), (" stop ", True), ("Stop.", True), ("STOPALL", True), ("cancel", True),
     ("END!", True), ("quit", True), ("unsubscribe", True), ("START", False), ("yes", False),
     ("UNSTOP", False), ("please stop", None), ("Stop by at 3", None), ("", None)],
)
def test_only_a_whole_keyword_changes_consent(body: str, answer: bool | None) -> None:
    assert consent_keyword(body) is answer


def test_consent_changes_once_per_actual_change() -> None:
    recipient = Recipient("+14155550111", opted_out=False, keyword="", changed_at=NOW)
    assert recipient.answer("STOP", opt_out=True, lead_id="l1", now=NOW)
    assert not recipient.answer("STOP", opt_out=True, lead_id="l1", now=NOW)
    assert recipient.answer("START", opt_out=False, lead_id="l1", now=NOW)
    assert [e.recipient.opted_out for e in recipient.pull_events()] == [True, False]


@pytest.mark.parametrize(("body", "limit", "fits"), [
    ("a" * 160, 1, True), ("a" * 161, 1, False), ("a" * 306, 2, True), ("a" * 307, 2, False),
    ("€" * 80, 1, True), ("€" * 81, 1, False), ("ж" * 70, 1, True), ("ж" * 71, 1, False),
    ("a" * 1530, 10, True), ("a" * 1531, 10, False),
])
def test_bodies_are_held_to_the_segment_limit(body: str, limit: int, fits: bool) -> None:
    if fits:
        assert check_body(body, limit).segments <= limit
    else:
        with pytest.raises(MessageTooLong) as refused:
            check_body(body, limit)
        assert refused.value.metadata["max_segments"] == str(limit)


def test_too_long_names_length_encoding_and_limit() -> None:
    with pytest.raises(MessageTooLong) as refused:
        check_body("ж" * 71, 1)
    assert str(refused.value) == (
        "body: 71 UCS-2 characters make 2 segments; the limit is 1 segment "
        "(70 UCS-2 characters)")
    assert refused.value.metadata["encoding"] == Encoding.UCS_2.value


def test_a_blank_body_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="body: is required"):
        check_body(" \n ", 1)
