"""Checks for the text that enters through requests.

PostgreSQL cannot store a NUL character and nobody means to type a control
character, so identifiers must be printable and free text may hold only tabs
and line breaks besides printable characters. Every refusal names its field.
"""

from __future__ import annotations

import re

from services.shared.errors import InvalidArgument

MAX_ID_LENGTH = 64
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")  # keeps \t \n \f \r


def identifier(value: str, field: str, *, required: bool = True) -> str:
    """An id as clients send it back: 1 to 64 printable characters."""
    if not value:
        if required:
            raise InvalidArgument.field(field, "is required")
        return value
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument.field(field, f"at most {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise InvalidArgument.field(field, "must hold printable characters only")
    return value


def text(value: str, field: str, *, max_length: int) -> str:
    """Free text: at most `max_length` characters and no control characters."""
    if len(value) > max_length:
        raise InvalidArgument.field(field, f"at most {max_length} characters")
    if _CONTROL.search(value):
        raise InvalidArgument.field(field, "must not contain control characters")
    return value


def printable(value: str) -> bool:
    return value.isprintable()
