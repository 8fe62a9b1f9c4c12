"""Message templates: texts with placeholders, kept for the team, with no IO.

A template is stored as written ("See you {appointment_time}, {first_name}!");
the client that sends a text fills the placeholders in for one lead (the web
console's `placeholders.js`), so what is sent is always what the user saw.
Saving refuses a placeholder nobody fills in, naming `body`.

The use cases are in `services.messaging.service`; the repository is the
adapters' business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime

from crm.messaging.v1 import messaging_pb2

from services.shared import errors, ids, rules, validation

PLACEHOLDERS = ("first_name", "last_name", "name", "appointment_time", "appointment_date",
                "agent", "status")
# The contract's rules (crm.common.v1.FieldRules on SaveMessageTemplateRequest).
NAME = rules.of(messaging_pb2.SaveMessageTemplateRequest, "name")
MAX_NAME_LENGTH = NAME.max_length
MAX_BODY_LENGTH = rules.of(messaging_pb2.SaveMessageTemplateRequest, "body").max_length
MAX_TEMPLATES = 200
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class TemplateNotFound(errors.NotFound):
    reason = "TEMPLATE_NOT_FOUND"

    def __init__(self, template_id: str) -> None:
        super().__init__(f"message template {template_id!r} does not exist",
                         metadata={"template_id": template_id})


class TooManyTemplates(errors.FailedPrecondition):
    reason = "TOO_MANY_TEMPLATES"

    def __init__(self) -> None:
        super().__init__(f"at most {MAX_TEMPLATES} message templates; delete one first",
                         metadata={"max_templates": str(MAX_TEMPLATES)})


@dataclass(frozen=True)
class TemplateSaved:
    template: MessageTemplate


@dataclass(frozen=True)
class TemplateDeleted:
    template: MessageTemplate


TemplateEvent = TemplateSaved | TemplateDeleted


@dataclass
class MessageTemplate:
    template_id: str
    name: str
    body: str
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime
    version: int = 1
    events: list[TemplateEvent] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def create(cls, *, name: str, body: str, actor: str, now: datetime) -> MessageTemplate:
        name, body = checked(name, body)
        template = cls(str(ids.uuid4()), name, body, actor, now, actor, now)
        template.events.append(TemplateSaved(replace(template, events=[])))
        return template

    def change(self, *, name: str, body: str, actor: str, now: datetime) -> None:
        self.name, self.body = checked(name, body)
        self.updated_by, self.updated_at = actor, now
        self.version += 1
        self.events.append(TemplateSaved(replace(self, events=[])))

    def delete(self, *, actor: str, now: datetime) -> None:
        self.updated_by, self.updated_at = actor, now  # who deleted it, and when
        self.events.append(TemplateDeleted(replace(self, events=[])))

    def pull_events(self) -> list[TemplateEvent]:
        found, self.events = self.events, []
        return found


def checked(name: str, body: str) -> tuple[str, str]:
    """The name and body trimmed, or InvalidArgument naming every bad field."""
    found = errors.Violations()
    if not name.strip():
        found.add("name", "is required")
    elif (problem := rules.problem(NAME, name)) is not None:
        found.add("name", problem)
    if not body.strip():
        found.add("body", "is required")
    else:
        try:
            validation.text(body, "body", max_length=MAX_BODY_LENGTH)
        except errors.InvalidArgument as error:
            for violation in error.violations:
                found.add(violation.field, violation.description)
    name, body = name.strip(), body.strip()
    unknown = sorted({m for m in _PLACEHOLDER.findall(body) if m not in PLACEHOLDERS})
    if unknown:
        known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
        found.add("body", f"unknown placeholder {', '.join(f'{{{u}}}' for u in unknown)}; "
                          f"known: {known}")
    found.raise_if_any()
    return name, body
