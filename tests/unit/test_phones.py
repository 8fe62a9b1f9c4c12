"""Phone numbers read once and kept: the kept answers are those of a fresh reading."""

from __future__ import annotations

import phonenumbers
import pytest

from services.shared import phones
from services.shared.errors import InvalidArgument

INTERNATIONAL = phonenumbers.PhoneNumberFormat.INTERNATIONAL


def fresh_display(e164: str) -> str:
    try:
        return phonenumbers.format_number(phonenumbers.parse(e164, None), INTERNATIONAL)
    except phonenumbers.NumberParseException:
        return e164


@pytest.mark.parametrize(("raw", "region", "e164"), [
    ("(415) 555-2671", "US", "+14155552671"),
    ("+44 20 7946 0958", "US", "+442079460958"),
    ("020 7946 0958", "GB", "+442079460958"),
    ("(876) 523-0123 ext. 12", "JM", "+18765230123"),  # E.164 has no extension
    ("06 1234 5678", "IT", "+390612345678"),  # Italy's leading zero stays
])
def test_a_number_read_twice_reads_and_shows_as_read_afresh(raw: str, region: str,
                                                            e164: str) -> None:
    phones._kept.clear()
    for _ in range(2):  # parsed, then kept
        assert phones.to_e164(raw, region) == e164
        assert phones.display(e164) == fresh_display(e164)
    phones._kept.clear()
    assert phones.display(e164) == fresh_display(e164)  # shown without being read first


@pytest.mark.parametrize(("raw", "why"), [
    ("hello", "'hello' is not a phone number"),
    ("+1 555 0100", "'+1 555 0100' is not a valid phone number"),
])
def test_a_refused_number_is_refused_again_the_same_way(raw: str, why: str) -> None:
    phones._kept.clear()
    for _ in range(2):
        with pytest.raises(InvalidArgument) as refused:
            phones.to_e164(raw, "US", field="to")
        [violation] = refused.value.violations
        assert (violation.field, violation.description) == ("to", why)


def test_what_is_not_a_number_is_shown_as_it_is() -> None:
    assert phones.display("not a number") == "not a number"
    assert phones.display("+12") == fresh_display("+12")


def test_only_the_most_recent_numbers_are_kept() -> None:
    phones._kept.clear()
    for i in range(phones.KEPT + 10):
        phones.display(f"+1415555{i:04d}")
    assert len(phones._kept) <= phones.KEPT
    assert ("+14155550000", None) not in phones._kept
