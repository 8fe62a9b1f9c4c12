"""Phone numbers: parsed with `phonenumbers`, stored in E.164."""

from __future__ import annotations

import phonenumbers

from services.shared.errors import InvalidArgument

MAX_INPUT_LENGTH = 32


def to_e164(raw: str, region: str, *, field: str = "phone") -> str:
    """Normalize a number written any common way; refuse one that cannot exist."""
    text = raw.strip()
    if not text:
        raise InvalidArgument.field(field, "is required")
    if len(text) > MAX_INPUT_LENGTH:
        raise InvalidArgument.field(field, f"at most {MAX_INPUT_LENGTH} characters")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise InvalidArgument.field(field, f"{raw!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidArgument.field(field, f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
