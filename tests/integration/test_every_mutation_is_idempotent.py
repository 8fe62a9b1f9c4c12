"""Every RPC the contracts mark as changing state runs once per idempotency key,
refusals included: each is called twice, with the same key, with a request it
must refuse (an empty one), and the second answer is the first, replayed.

Driven by the contracts, so a new mutating RPC is covered the day it is added.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass

from services.shared.clients import idempotency, new_key
from services.shared.interceptor import Kind, kind_of
from services.shared.server import RunningService
from tests.support.rpc import refusal

SERVICES = {"leads": "crm.leads.v1.LeadsService", "bookings": "crm.bookings.v1.BookingsService",
            "messaging": "crm.messaging.v1.MessagingService"}
MUTATIONS = [
    (name, method.name)
    for name, full_name in SERVICES.items()
    for method in descriptor_pool.Default().FindServiceByName(full_name).methods
    if kind_of(f"/{full_name}/{method.name}") is Kind.MUTATING
]


def test_the_contracts_have_mutating_rpcs_in_every_service() -> None:
    assert {name for name, _ in MUTATIONS} == set(SERVICES)
    assert ("leads", "UpdateLeadStatus") in MUTATIONS and ("messaging", "SendSms") in MUTATIONS


@pytest.mark.parametrize(("service", "rpc"), MUTATIONS)
async def test_a_refused_mutation_is_stored_under_its_key_and_replayed(
    servers: dict[str, RunningService], channel_for: Callable[..., grpc.aio.Channel],
    service: str, rpc: str,
) -> None:
    method = descriptor_pool.Default().FindServiceByName(SERVICES[service]).methods_by_name[rpc]
    request = GetMessageClass(method.input_type)()
    call = channel_for(servers[service].target, "gateway", retries=False).unary_unary(
        f"/{SERVICES[service]}/{rpc}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=GetMessageClass(method.output_type).FromString,
    )
    key = new_key()
    answers = []
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, metadata=idempotency(key))
        initial = dict(refused.value.initial_metadata() or ())
        answers.append((refusal(refused.value).status, initial.get("idempotent-replayed")))
    (first, first_replayed), (second, second_replayed) = answers
    assert first.code != grpc.StatusCode.OK.value[0] and first.details, first
    assert (first_replayed, second_replayed) == (None, "true")
    assert second == first
