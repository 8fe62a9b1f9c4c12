"""Checks for the text that enters through requests.

PostgreSQL cannot store a NUL character and nobody means to type a control
character, so identifiers are printable ASCII (without space, '/' or ':', so
they travel in a URL's path as they are) and free text may hold only tabs and
line breaks besides printable characters. Every refusal names its field. The
rules are the contracts' (services.shared.rules): the ids' of `GetLeadRequest.lead_id`.
"""

from __future__ import annotations

import re

from crm.leads.v1 import leads_pb2

from services.shared import rules
from services.shared.errors import InvalidArgument

ID = rules.of(leads_pb2.GetLeadRequest, "lead_id")
MAX_ID_LENGTH = ID.max_length
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")  # keeps \t \n \f \r


def identifier(value: str, field: str, *, required: bool = True,
               longest: int = MAX_ID_LENGTH) -> str:
    """An id as clients send it back: 1 to 64 (`longest`) characters of the id pattern."""
    problem = id_problem(value, longest)
    if problem is not None and (value or required):
        raise InvalidArgument.field(field, problem)
    return value


def id_problem(value: str, longest: int = MAX_ID_LENGTH) -> str | None:
    """What is wrong with an id, if anything."""
    if not value:
        return "is required"
    if len(value) > longest:
        return f"at most {longest} characters"
    if not rules.matches(ID, value):
        return f"must be {rules.words(ID.pattern)}"
    return None


def text(value: str, field: str, *, max_length: int) -> str:
    """Free text: at most `max_length` characters and no control characters."""
    if len(value) > max_length:
        raise InvalidArgument.field(field, f"at most {max_length} characters")
    if _CONTROL.search(value):
        raise InvalidArgument.field(field, "must not contain control characters")
    return value


def is_identifier(value: str) -> bool:
    return id_problem(value) is None
