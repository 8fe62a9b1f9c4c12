"""The request rules written in the contracts (crm.common.v1.FieldRules), as services apply them.

A field's limits (length, pattern, items, range) are written once, as an
option on the field in protos/; the services' validation reads them here and
the gateway publishes the same options in /openapi.json, so the document and
the servers cannot drift. `words` says in words what a pattern demands, for
refusals and for the document's descriptions.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from crm.common.v1 import common_pb2
from crm.leads.v1 import leads_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

FieldRules = common_pb2.FieldRules



def of(message: type[Message] | Descriptor, field: str) -> FieldRules:
    """The rules of one field of a request message (empty rules if it has none)."""
    descriptor: Descriptor = (message if isinstance(message, Descriptor)
                              else message.DESCRIPTOR)  # type: ignore[assignment]
    return of_field(descriptor.fields_by_name[field])


def of_field(field: FieldDescriptor) -> FieldRules:
    options: Any = field.GetOptions()
    extension: Any = common_pb2.rules
    if not options.HasExtension(extension):
        return FieldRules()
    found: FieldRules = options.Extensions[extension]
    return found


@functools.cache
def compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def words(pattern: str) -> str:
    """A pattern of the contracts in words ("printable ASCII characters…")."""
    return _WORDS.get(pattern, f"text matching {pattern}")


def matches(rules: FieldRules, value: str) -> bool:
    return not rules.pattern or compiled(rules.pattern).fullmatch(value) is not None


def problem(rules: FieldRules, value: str) -> str | None:
    """What is wrong with a string value by its field's rules, in words; None if nothing."""
    if rules.HasField("min_length") and len(value) < rules.min_length:
        return f"at least {rules.min_length} characters"
    if rules.HasField("max_length") and len(value) > rules.max_length:
        return f"at most {rules.max_length} characters"
    if not matches(rules, value):
        return f"must be {words(rules.pattern)}"
    return None


def at_most(bound: str) -> str:
    """A regular expression for the numbers of bound's length, without leading zeros,
    that are at most `bound`."""
    options = []
    for i, digit in enumerate(bound):
        low = 1 if i == 0 else 0
        if int(digit) > low:
            rest = len(bound) - i - 1
            options.append(f"{bound[:i]}[{low}-{int(digit) - 1}]"
                           + (f"[0-9]{{{rest}}}" if rest else ""))
    return "|".join([*options, bound])


# What each pattern of the contracts asks for, in words. Every pattern in protos/
# is one of these (tests/unit/test_contract_rules.py holds them to it).
_WORDS = {
    of(leads_pb2.GetLeadRequest, "lead_id").pattern:
        "printable ASCII characters other than space, '/' and ':'",
    of(leads_pb2.CreateLeadRequest, "name").pattern:
        "text that is not blank and has no control characters",
    of(leads_pb2.CreateLeadRequest, "email").pattern:
        "an email address, such as name@example.com",
    "^[^\\x00-\\x08\\x0b\\x0e-\\x1f\\x7f]*$":
        "text without control characters other than tabs and line breaks",
}
