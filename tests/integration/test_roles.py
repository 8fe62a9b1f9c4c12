"""Who may call what: every RPC of the contracts, for every role, on real servers.

Driven by the contracts' descriptors: a new RPC is in the table the day it is
added, and fails here until `services.shared.roles` decides who may call it.
A role that may not call a method is PERMISSION_DENIED / ROLE_FORBIDS; a role
that may gets some other answer (an empty request is usually INVALID_ARGUMENT,
a stream its first bookmark), never ROLE_FORBIDS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from crm.leads.v1 import leads_pb2, leads_pb2_grpc
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass

from services.shared import roles
from services.shared.clients import idempotency, new_key
from services.shared.interceptor import Kind, kind_of
from services.shared.server import RunningService
from tests.support.rpc import refusal

SERVICES = {"leads": "crm.leads.v1.LeadsService", "bookings": "crm.bookings.v1.BookingsService",
            "messaging": "crm.messaging.v1.MessagingService"}
METHODS = [
    (name, method)
    for name, full_name in SERVICES.items()
    for method in descriptor_pool.Default().FindServiceByName(full_name).methods
]
# The principal of tests.support.servers.TOKENS that has each role.
AS_ROLE = {"viewer": "vera/viewer", "agent": "alice", "admin": "ada/admin", "service": "gateway"}
SERVICE_ONLY = {"ReceiveInboundMessage", "RecordDeliveryStatus"}


def path(method: Any) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def expected(role: str, method: Any) -> bool:
    """The decision the issue asks for, spelled out independently of `roles`."""
    if method.name in SERVICE_ONLY:
        return role == "service"
    if kind_of(path(method)) is Kind.MUTATING:
        return role != "viewer"
    return True


def test_every_rpc_of_the_contracts_has_a_role_decision() -> None:
    undecided = [path(m) for _, m in METHODS if path(m) not in roles.ALLOWED]
    assert undecided == []
    assert set(roles.ALLOWED) == {path(m) for _, m in METHODS}  # none for an RPC long gone
    assert len(METHODS) >= 25


@pytest.mark.parametrize("role", sorted(AS_ROLE))
def test_the_decisions_are_the_issues(role: str) -> None:
    differ = [path(m) for _, m in METHODS if roles.may_call(role, path(m)) != expected(role, m)]
    assert differ == []


def test_a_method_nobody_decided_is_refused_to_everyone() -> None:
    assert roles.allowed("/crm.leads.v1.LeadsService/Unheard") == frozenset()


async def answer(channel: grpc.aio.Channel, method: Any) -> grpc.aio.AioRpcError | None:
    """How `method` answers an empty request: None for OK (a stream: its first message)."""
    request = GetMessageClass(method.input_type)()
    serialize = lambda message: message.SerializeToString()  # noqa: E731
    parse = GetMessageClass(method.output_type).FromString
    metadata = idempotency(new_key())
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path(method), request_serializer=serialize,
                                          response_deserializer=parse)(request, metadata=metadata)
            try:
                await stream.read()
            finally:
                stream.cancel()
        else:
            await channel.unary_unary(path(method), request_serializer=serialize,
                                      response_deserializer=parse)(request, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def test_every_rpc_for_every_role(
    servers: dict[str, RunningService], channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    wrong: list[str] = []
    for role, who in AS_ROLE.items():
        for service, method in METHODS:
            channel = channel_for(servers[service].target, who, retries=False)
            error = await answer(channel, method)
            forbidden = error is not None and refusal(error).reason == "ROLE_FORBIDS"
            if forbidden != (not expected(role, method)):
                wrong.append(f"{role} {method.name}: {'refused' if forbidden else 'served'}")
            if forbidden:
                assert error is not None
                refused = refusal(error)
                assert error.code() is grpc.StatusCode.PERMISSION_DENIED
                assert refused.metadata["role"] == role
                assert refused.metadata["required_role"] == (
                    "service" if method.name in SERVICE_ONLY else "agent")
                assert method.name in refused.message and who.split("/")[0] in refused.message
    assert wrong == []


async def test_a_viewer_is_refused_before_its_idempotency_key_is_asked_for(
    servers: dict[str, RunningService], channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    stub = leads_pb2_grpc.LeadsServiceStub(channel_for(servers["leads"].target, "vera/viewer"))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.CreateLead(leads_pb2.CreateLeadRequest(name="Ada", phone="+14155550123"))
    assert refusal(denied.value).reason == "ROLE_FORBIDS"
    assert "CreateLead changes data, which the role viewer may not do" in denied.value.details()


# -- x-crm-org ------------------------------------------------------------------------

def acted_in(caplog: pytest.LogCaptureFixture, principal: str) -> list[tuple[str, str]]:
    return [(r.rpc, r.org) for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "crm.access" and getattr(r, "principal", "") == principal]


async def test_a_service_acts_in_the_org_it_names_and_a_user_in_its_own(
    servers: dict[str, RunningService], channel_for: Callable[..., grpc.aio.Channel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="crm.access")
    target = servers["leads"].target
    as_service = leads_pb2_grpc.LeadsServiceStub(channel_for(target, "messaging"))
    await as_service.ListLeads(leads_pb2.ListLeadsRequest(), metadata=(("x-crm-org", "acme"),))
    await as_service.ListLeads(leads_pb2.ListLeadsRequest())
    as_carol = leads_pb2_grpc.LeadsServiceStub(channel_for(target, "carol@acme"))
    await as_carol.ListLeads(leads_pb2.ListLeadsRequest())
    assert acted_in(caplog, "messaging") == [("ListLeads", "acme"), ("ListLeads", "default")]
    assert acted_in(caplog, "carol") == [("ListLeads", "acme")]


@pytest.mark.parametrize("who", ["alice", "carol@acme", "ada/admin", "vera/viewer"])
async def test_a_user_may_not_choose_its_org(
    servers: dict[str, RunningService], channel_for: Callable[..., grpc.aio.Channel], who: str,
) -> None:
    stub = leads_pb2_grpc.LeadsServiceStub(channel_for(servers["leads"].target, who))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.ListLeads(leads_pb2.ListLeadsRequest(), metadata=(("x-crm-org", "acme"),))
    refused = refusal(denied.value)
    assert (denied.value.code(), refused.reason) == (grpc.StatusCode.PERMISSION_DENIED,
                                                     "ROLE_FORBIDS")
    assert refused.metadata["required_role"] == "service"


@pytest.mark.parametrize("org", ["", "Acme", "a b", "x" * 64, "acme;drop"])
async def test_an_org_that_is_no_org_name_is_refused(
    servers: dict[str, RunningService], channel_for: Callable[..., grpc.aio.Channel], org: str,
) -> None:
    stub = leads_pb2_grpc.LeadsServiceStub(channel_for(servers["leads"].target, "gateway"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListLeads(leads_pb2.ListLeadsRequest(), metadata=(("x-crm-org", org),))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refusal(refused.value).reason == "INVALID_ORG"
    assert "x-crm-org metadata: " in refused.value.details()
