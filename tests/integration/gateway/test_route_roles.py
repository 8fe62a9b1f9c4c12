"""Every HTTP route of the gateway, for every role: a route that reaches an RPC is
refused 403 ROLE_FORBIDS exactly when that RPC's role decision refuses the role.

Driven by the gateway's router: a new route fails here until it is given a
decision below (which RPC it reaches, or why no role applies to it).
"""

from __future__ import annotations

import re

import pytest

from gateway import transcoding
from gateway.app import RunningGateway
from services.shared import roles
from tests.integration.gateway.conftest import Client
from tests.integration.gateway.support import new_key, request

AS_ROLE = {"viewer": "vera/viewer", "agent": "alice", "admin": "ada/admin", "service": "gateway"}
_MESSAGING = "/crm.messaging.v1.MessagingService/"
# Routes that are not transcoded from a binding of the contracts, and what decides them.
OTHER_ROUTES: dict[str, str] = {
    "events": "/crm.leads.v1.LeadsService/Subscribe",  # and the other two Subscribes
    "legacy.confirm": "/crm.bookings.v1.BookingsService/ConfirmAppointment",
    "legacy.send_sms": _MESSAGING + "SendSms",
    "legacy.sms_history": _MESSAGING + "ListMessages",
    "legacy.update_status": "/crm.leads.v1.LeadsService/UpdateLeadStatus",
    # Reached with no credentials, or with credentials checked there and then.
    "auth.login": "signs in anyone but a service (see test_identity)",
    "auth.session": "the session's own",
    "auth.logout": "the session's own",
    "webhooks.twilio_status": "Twilio's signature; forwarded with the gateway's own token",
    "webhooks.twilio_inbound": "Twilio's signature; forwarded with the gateway's own token",
    "openapi": "public",
    "healthz": "public",
    "console.index": "public",
    "console.static": "public",
    "console.worker": "public",
    "console.manifest": "public",
}
LEGACY_BODIES = {
    "legacy.confirm": {"appointmentId": "no-such-appointment"},
    "legacy.send_sms": {"leadId": "no-such-lead", "message": "hello"},
    "legacy.update_status": {"leadId": "no-such-lead", "status": "contacted"},
}


def routes(gateway: RunningGateway) -> list[tuple[str, str, str]]:
    """(name, method, path with every variable filled) of every route but HEAD's."""
    found = []
    for route in gateway.app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = re.sub(r"\{[^}]+\}", "x", route.resource.canonical)
        found.append((str(route.resource.name), route.method, path))
    return found


def decisions() -> dict[str, str]:
    """Route name → the RPC it reaches, or why no role applies."""
    found = dict(OTHER_ROUTES)
    counts: dict[str, int] = {}
    for binding in transcoding.bindings():
        count = counts[binding.full_method] = counts.get(binding.full_method, 0) + 1
        name = binding.name if count == 1 else f"{binding.name}.binding{count}"
        found[name] = binding.full_method
    return found


async def test_every_route_has_a_decision(full_gateway: RunningGateway) -> None:
    decided = decisions()
    assert [name for name, _, _ in routes(full_gateway) if name not in decided] == []
    assert len(routes(full_gateway)) >= 30


@pytest.mark.parametrize("role", sorted(AS_ROLE))
async def test_every_route_for_every_role(
    full_gateway: RunningGateway, client: Client, role: str,
) -> None:
    api = client(full_gateway, who=AS_ROLE[role])
    decided = decisions()
    wrong = []
    for name, method, path in routes(full_gateway):
        rpc = decided[name]
        if not rpc.startswith("/"):
            continue
        if name == "events":  # a stream served does not end: its head is the answer
            async with api.get(path + "?types=lead.created") as stream:
                status, text = stream.status, (await stream.text() if stream.status != 200
                                               else "")
            forbidden = status == 403 and "ROLE_FORBIDS" in text
        else:
            body = LEGACY_BODIES.get(name, {}) if method in {"POST", "PATCH", "PUT"} else None
            answer = await request(api, method, path, json_body=body, key=new_key())
            status, forbidden = answer.status, (answer.status == 403
                                                and "ROLE_FORBIDS" in str(answer.body))
        if forbidden != (role not in roles.allowed(rpc)):
            wrong.append(f"{role} {method} {path} ({name}): {status}")
    assert wrong == []
