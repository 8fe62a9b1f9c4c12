"""Which roles may call each RPC: one decision per method of the contracts.

Every method of every service is named here, with the roles that may call it;
the call interceptor refuses anyone else PERMISSION_DENIED / ROLE_FORBIDS, and
a method named nowhere is refused to everyone (so a new RPC does nothing until
someone decides who may call it; tests/integration/test_roles.py fails until then).

    reads and streams                    viewer, agent, admin, service
    every other (mutating) method        agent, admin, service
    Twilio's callbacks (ReceiveInboundMessage, RecordDeliveryStatus)
                                         service only: the gateway forwards them once
                                         it has verified Twilio's signature; a user
                                         calling them could opt any number out

`admin` may do what `agent` may; no method of the contracts is an audit-level
setting yet, so none is for admins alone.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.shared.auth import ADMIN, AGENT, SERVICE, VIEWER

READERS = frozenset({VIEWER, AGENT, ADMIN, SERVICE})
WRITERS = frozenset({AGENT, ADMIN, SERVICE})
SERVICES = frozenset({SERVICE})

_LEADS = "/crm.leads.v1.LeadsService/"
_BOOKINGS = "/crm.bookings.v1.BookingsService/"
_MESSAGING = "/crm.messaging.v1.MessagingService/"

ALLOWED: Mapping[str, frozenset[str]] = {
    _LEADS + "CreateLead": WRITERS,
    _LEADS + "GetLead": READERS,
    _LEADS + "ListLeads": READERS,
    _LEADS + "UpdateLeadStatus": WRITERS,
    _LEADS + "BatchUpdateLeadStatus": WRITERS,
    _LEADS + "ListStatusChanges": READERS,
    _LEADS + "Subscribe": READERS,
    _BOOKINGS + "CreateAppointment": WRITERS,
    _BOOKINGS + "GetAppointment": READERS,
    _BOOKINGS + "ListAppointments": READERS,
    _BOOKINGS + "ConfirmAppointment": WRITERS,
    _BOOKINGS + "CancelAppointment": WRITERS,
    _BOOKINGS + "CompleteAppointment": WRITERS,
    _BOOKINGS + "ListAppointmentChanges": READERS,
    _BOOKINGS + "Subscribe": READERS,
    _MESSAGING + "SendSms": WRITERS,
    _MESSAGING + "GetMessage": READERS,
    _MESSAGING + "ListMessages": READERS,
    _MESSAGING + "GetProviderStatus": READERS,
    _MESSAGING + "ReceiveInboundMessage": SERVICES,
    _MESSAGING + "RecordDeliveryStatus": SERVICES,
    _MESSAGING + "ListMessageTemplates": READERS,
    _MESSAGING + "SaveMessageTemplate": WRITERS,
    _MESSAGING + "DeleteMessageTemplate": WRITERS,
    _MESSAGING + "Subscribe": READERS,
}


def allowed(method: str) -> frozenset[str]:
    """The roles that may call `method` ("/pkg.Service/Method"); none if it is not decided."""
    return ALLOWED.get(method, frozenset())


def may_call(role: str, method: str) -> bool:
    return role in allowed(method)
