"""Phone numbers: parsed with `phonenumbers`, stored in E.164.

Parsing is slow (regular expressions over the country's metadata, about a
tenth of a millisecond a number), and a lead's write reads its number and
then shows it. So a number is parsed once: how it is written in E.164 and for
people are kept together, for the numbers seen most recently (a new lead's
number is then shown without parsing it again, a known one is not parsed at
all). Both functions are pure, so a kept answer is the answer.
"""

from __future__ import annotations

from collections import OrderedDict

import phonenumbers
from crm.leads.v1 import leads_pb2

from services.shared import rules
from services.shared.errors import InvalidArgument

# The contract's limit (crm.common.v1.FieldRules on CreateLeadRequest.phone).
MAX_INPUT_LENGTH = rules.of(leads_pb2.CreateLeadRequest, "phone").max_length
# Readings kept, least recently used dropped first (a few hundred bytes each).
KEPT = 8192


class _Kept(OrderedDict[tuple[str, str | None], tuple[str, str]]):
    """(text, region) → (E.164 or "", shown or what is wrong)."""

    def reading(self, text: str, region: str | None) -> tuple[str, str]:
        key = (text, region)
        found = self.get(key)
        if found is None:
            found = self[key] = _parse(text, region)
            if found[0]:  # a stored number is shown from the same reading
                self[(found[0], None)] = found
            while len(self) > KEPT:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return found


def _parse(text: str, region: str | None) -> tuple[str, str]:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return "", "is not a phone number"
    if region is not None and not phonenumbers.is_valid_number(number):
        return "", "is not a valid phone number"
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    number.extension = None  # E.164 has none: shown as the stored number is
    return e164, phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


_kept = _Kept()


def to_e164(raw: str, region: str, *, field: str = "phone") -> str:
    """Normalize a number written any common way; refuse one that cannot exist."""
    text = raw.strip()
    if not text:
        raise InvalidArgument.field(field, "is required")
    if len(raw) > MAX_INPUT_LENGTH:
        raise InvalidArgument.field(field, f"at most {MAX_INPUT_LENGTH} characters")
    e164, shown = _kept.reading(text, region)
    if not e164:
        raise InvalidArgument.field(field, f"{raw!r} {shown}")
    return e164


def display(e164: str) -> str:
    """A stored number as its own country writes it, for people: "+44 20 7946 0958"."""
    found, shown = _kept.reading(e164, None)
    return shown if found else e164
