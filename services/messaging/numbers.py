"""Which org owns which SMS number.

Each org texts from a number of its own, and a text that comes in belongs to
the org owning the number it was sent to: a STOP opts its sender out in that
org only. CRM_SMS_FROM_NUMBERS maps them (`org:+15550001,acme:+15550002`);
without it, TWILIO_FROM_NUMBER is the only number and everything is the org
`default`'s, whatever number a text names.

With Twilio, an org with no number of its own cannot text
(FAILED_PRECONDITION / NO_SMS_NUMBER): sending from another org's number would
route its recipients' STOP to that org. The console provider sends nothing,
so there every org may "send", from its number or none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.shared import errors
from services.shared.auth import DEFAULT_ORG
from services.shared.config import ConfigError
from services.shared.orgs import is_org
from services.shared.phones import to_e164

VARIABLE = "CRM_SMS_FROM_NUMBERS"


class NoSmsNumber(errors.FailedPrecondition):
    reason = "NO_SMS_NUMBER"

    def __init__(self, org: str) -> None:
        super().__init__(f"the org {org!r} has no SMS number to text from; give it one in "
                         f"{VARIABLE}", metadata={"org": org})


@dataclass(frozen=True)
class Numbers:
    # org → its number (E.164)
    by_org: Mapping[str, str] = field(default_factory=dict)
    # Whether CRM_SMS_FROM_NUMBERS names them (else one number, or none: `default`).
    mapped: bool = False

    @classmethod
    def parse(cls, raw: str, *, region: str = "US") -> Numbers:
        """CRM_SMS_FROM_NUMBERS (`org:+1…,…`); empty: no map."""
        if not raw.strip():
            return cls()
        by_org: dict[str, str] = {}
        owners: dict[str, str] = {}
        for i, entry in enumerate(raw.split(",")):
            org, sep, number = entry.strip().partition(":")
            where = f"{VARIABLE} entry {i + 1}"
            if not sep or not is_org(org.strip()):
                raise ConfigError(f"{where}: write `org:+15550001` (an org is lower-case "
                                  "letters, digits, '-' and '_')")
            org = org.strip()
            try:
                e164 = to_e164(number.strip(), region, field="number")
            except errors.InvalidArgument:
                raise ConfigError(f"{where}: the number is not a phone number") from None
            if org in by_org:
                raise ConfigError(f"{where}: the org {org!r} is named twice")
            if e164 in owners:
                raise ConfigError(f"{where}: the number is {owners[e164]!r}'s already")
            by_org[org] = e164
            owners[e164] = org
        return cls(by_org, mapped=True)

    def sender_for(self, org: str, *, the_one_number: str, required: bool) -> str:
        """The number `org` texts from; NoSmsNumber if it has none and needs one.
        Without a map, `the_one_number` (TWILIO_FROM_NUMBER) is `default`'s."""
        if self.mapped:
            number = self.by_org.get(org, "")
        else:
            number = the_one_number if org == DEFAULT_ORG else ""
        if not number and required:
            raise NoSmsNumber(org)
        return number

    def org_texted(self, to: str, region: str) -> str:
        """The org owning the number a text was sent to. With no map, `default`; with
        one, a number of no org is INVALID_ARGUMENT on `to`."""
        if not self.mapped:
            return DEFAULT_ORG
        number = to_e164(to, region, field="to")
        for org, owned in self.by_org.items():
            if owned == number:
                return org
        raise errors.InvalidArgument.field("to", f"is none of the numbers of {VARIABLE}")
