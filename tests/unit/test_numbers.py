"""Which org owns which SMS number: CRM_SMS_FROM_NUMBERS, and without it."""

from __future__ import annotations

import pytest

from services.messaging.numbers import NoSmsNumber, Numbers
from services.messaging.settings import SmsSettings
from services.shared import errors
from services.shared.config import ConfigError

ONE = "+14155550100"


def test_each_org_texts_from_its_own_number_and_owns_the_texts_sent_to_it() -> None:
    numbers = Numbers.parse("default:+14155550100, acme:+1 415 555 0200")
    assert numbers.sender_for("acme", the_one_number="", required=True) == "+14155550200"
    assert numbers.org_texted("+1 (415) 555-0200", "US") == "acme"
    assert numbers.org_texted(ONE, "US") == "default"


def test_with_a_map_a_number_of_no_org_is_refused_naming_to() -> None:
    numbers = Numbers.parse(f"default:{ONE}")
    with pytest.raises(errors.InvalidArgument) as refused:
        numbers.org_texted("+14155550999", "US")
    assert [v.field for v in refused.value.violations] == ["to"]


def test_without_a_map_the_one_number_is_defaults_and_every_text_in_too() -> None:
    numbers = Numbers.parse("")
    assert numbers.sender_for("default", the_one_number=ONE, required=True) == ONE
    assert numbers.org_texted("+14155550999", "US") == "default"
    with pytest.raises(NoSmsNumber):
        numbers.sender_for("acme", the_one_number=ONE, required=True)
    # The console sends nothing: there an org may "send" from no number.
    assert numbers.sender_for("acme", the_one_number="", required=False) == ""


@pytest.mark.parametrize(("raw", "says"), [
    ("acme", "entry 1: write `org:+15550001`"),
    ("Acme:+14155550100", "entry 1: write"),
    ("acme:not a number", "entry 1: the number is not a phone number"),
    ("acme:+14155550100,acme:+14155550200", "entry 2: the org 'acme' is named twice"),
    ("a:+14155550100,b:+14155550100", "entry 2: the number is 'a''s already"),
])
def test_a_bad_map_names_the_variable_the_entry_and_the_reason(raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Numbers.parse(raw)
    assert f"CRM_SMS_FROM_NUMBERS {says}" in str(refused.value)


def test_with_a_map_twilio_from_number_is_not_needed() -> None:
    settings = SmsSettings.from_env({"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t",
                                     "CRM_SMS_FROM_NUMBERS": f"default:{ONE}"})
    assert settings.numbers.mapped
    with pytest.raises(ConfigError):
        SmsSettings.from_env({"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"})
